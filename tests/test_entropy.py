"""The gate's entropy kernel: same numbers as verl's, no graph, no dependence on block size."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from erc_verl.entropy import entropy_from_logits_blockwise
from verl.utils.torch_functional import entropy_from_logits


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(1, 300),
    vocab=st.integers(2, 700),
    scale=st.sampled_from([0.1, 1.0, 10.0, 60.0]),
    block=st.sampled_from([None, 1, 7, 64, 1024]),
    seed=st.integers(0, 1000),
)
def test_matches_verl_entropy(rows, vocab, scale, block, seed):
    z = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    ref = entropy_from_logits(z)
    got = entropy_from_logits_blockwise(z.float(), block_rows=block)
    assert got.dtype == torch.float32 and got.shape == (rows,)
    torch.testing.assert_close(got.double(), ref, atol=2e-5 * max(1.0, math.log(vocab)), rtol=1e-5)
    assert (got >= -1e-5).all() and (got <= math.log(vocab) + 1e-4).all()


def test_leading_dims_and_low_precision():
    z = torch.randn(3, 5, 300) * 4
    ref = entropy_from_logits(z.double())
    torch.testing.assert_close(entropy_from_logits_blockwise(z).double(), ref, atol=1e-5, rtol=1e-5)
    bf = entropy_from_logits_blockwise(z.bfloat16())
    assert bf.dtype == torch.float32 and bf.shape == (3, 5)
    torch.testing.assert_close(bf.double(), entropy_from_logits(z.bfloat16().double()), atol=1e-4, rtol=1e-4)


def test_no_graph_even_when_logits_require_grad():
    z = torch.randn(4, 50, requires_grad=True)
    h = entropy_from_logits_blockwise(z)
    assert not h.requires_grad and h.grad_fn is None


@pytest.mark.parametrize("block", [1, 3, 16])
def test_block_size_does_not_change_the_result(block):
    z = torch.randn(37, 129) * 3
    assert torch.equal(entropy_from_logits_blockwise(z, block_rows=block), entropy_from_logits_blockwise(z, block_rows=37))
