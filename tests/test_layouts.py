"""The cluster layouts give the one-worker result: data parallel, Ulysses, and both, on CPU.

verl's engine TrainingWorker runs in 1, 2 or 4 processes over gloo (tests/harness/layouts.py)
with the same rollout, the same mini-batches and the same micro-batches in every layout. One
old-log-prob pass and one update of `dapo_erc` and `gppo_erc`, with the authors' positive-sample
NLL on, 2 mini-batches of 4 micro-batches each, temperatures 1.0 and 0.7, the V1 trainer's
nested batch and the older trainer's padded one. Ulysses runs through erc_verl's sdpa wrapper
(erc_verl/cpu/ulysses.py): without it each rank would attend over its own shard only.
"""

from __future__ import annotations

import pytest
import torch
from harness import training_worker as tw
from harness.layouts import run_layout, shard_order

pytestmark = pytest.mark.slow

ERC_TARGET = "erc_verl.ERCPolicyLossConfig"


def _loss(mode: str, **extra) -> dict:
    # A band narrower than the paper's, so that one update of this tiny model cuts some tokens
    # of the second mini-batch and the keep and clip fractions compared below are not all 1 and 0.
    return {
        "_target_": ERC_TARGET,
        "loss_mode": mode,
        "positive_nll_coeff": 0.1,
        "entropy_ratio_low": 0.999,
        "entropy_ratio_high": 1.001,
        **extra,
    }


# bsz 16, mini 8, micro 2: 2 mini-batches, 4 micro-batches each (2 per rank at data parallel 2).
CASES = [
    {"name": "dapo_erc-T1-nested", "policy_loss": _loss("dapo_erc"), "temperature": 1.0, "layout": "nested"},
    {"name": "dapo_erc-T0.7-padded", "policy_loss": _loss("dapo_erc"), "temperature": 0.7, "layout": "padded"},
    {"name": "gppo_erc-T0.7-nested", "policy_loss": _loss("gppo_erc"), "temperature": 0.7, "layout": "nested"},
    {"name": "gppo_erc-T1-padded", "policy_loss": _loss("gppo_erc"), "temperature": 1.0, "layout": "padded"},
    {
        "name": "dapo_erc-T1-nested-global",
        "policy_loss": _loss("dapo_erc", positive_nll_norm="global"),
        "temperature": 1.0,
        "layout": "nested",
        # SGD: the update is lr * gradient, so parameters compare the gradients linearly. Adam's
        # first step, g / (|g| + eps), turns float noise on near-zero gradients into ~1e-5 moves.
        # lr 1.0 moves the tiny model enough for the band to cut tokens of the second mini-batch.
        "extra_actor": {"optim.optimizer": "SGD", "optim.lr": 1.0},
    },
]
for _case in CASES:
    _case.update(bsz=16, mini=8, micro=2, seed=3)
# The positive-sample NLL's two normalisations at another micro-batching and data-parallel size:
# data parallel 2 with one micro-batch of 4 per rank and mini-batch, against DP1's micro-batches of 2.
REGROUPED = [
    dict(case, micro=4) for case in CASES if case["name"] in ("dapo_erc-T1-nested", "dapo_erc-T1-nested-global")
]

EXACT = ("actor/erc_keep_frac", "actor/erc_clip_frac_low", "actor/erc_clip_frac_high")
RELATIVE = (
    "actor/entropy_ratio_mean",
    "actor/entropy_ratio_min",
    "actor/entropy_ratio_max",
    "actor/pg_loss",
    "actor/positive_nll",
)
LAYOUTS = {"DP2": (2, 1), "SP2": (1, 2), "DP2xSP2": (2, 2)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # 4 query heads and 2 kv heads: Ulysses 2 splits both; the wrapper repeats kv heads as needed.
    return tw.tiny_qwen2(tmp_path_factory.mktemp("layouts") / "model", vocab_size=128, seed=5)


@pytest.fixture(scope="module")
def results(model_dir):
    return {name: run_layout(dp, sp, CASES, model_dir) for name, (dp, sp) in {"DP1": (1, 1), **LAYOUTS}.items()}


@pytest.fixture(scope="module")
def regrouped(model_dir):
    return run_layout(2, 1, REGROUPED, model_dir)


def test_shards_deal_whole_micro_batches_of_each_mini_batch():
    shards = shard_order(16, 8, 2, 2)
    assert shards[0] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert shards[1] == [4, 5, 6, 7, 12, 13, 14, 15]
    assert sorted(shards[0] + shards[1]) == list(range(16))
    with pytest.raises(ValueError, match="do not divide"):
        shard_order(16, 8, 4, 4)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_gives_the_one_worker_result(results, layout):
    for one, other in zip(results["DP1"], results[layout], strict=True):
        name = f"{layout}/{one['name']}"
        torch.testing.assert_close(other["old_log_probs"], one["old_log_probs"], rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(other["entropy"], one["entropy"], rtol=0, atol=1e-6, msg=name)
        m1, m2 = one["metrics"], other["metrics"]
        for key in EXACT:
            # The same token counts; the ranks' partial fractions are summed in another order,
            # so allow the last bits of a float64 (one token more or less moves it by ~1e-3).
            assert abs(m2[key] - m1[key]) <= 1e-12, (name, key, m1[key], m2[key])
        for key in RELATIVE:
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), (name, key)
        # SGD at lr 1.0 on parameters of size ~1: the gradient's fp32 reduction order over the ranks
        # shows up as is (DP2 against DP1 up to 1.1e-5 on torch 2.11.0's gloo, 2-core CPU machine).
        for pname, value in one["params"].items():
            torch.testing.assert_close(other["params"][pname], value, rtol=0, atol=3e-5, msg=f"{name}:{pname}")


def test_the_runs_are_informative(results):
    """The band cut some tokens and the NLL term was on, so the equalities above say something."""
    for case in results["DP1"]:
        metrics = case["metrics"]
        assert 0.0 < metrics["actor/erc_keep_frac"] < 1.0, case["name"]
        assert metrics["actor/positive_nll"] > 0.0, case["name"]


def test_global_nll_is_the_same_at_another_micro_batching_and_dp_size_and_micro_is_not(results, regrouped):
    one = {case["name"]: case for case in results["DP1"]}
    other = {case["name"]: case for case in regrouped}
    glob, glob2 = one["dapo_erc-T1-nested-global"], other["dapo_erc-T1-nested-global"]
    for key in ("actor/pg_loss", "actor/positive_nll"):
        assert glob2["metrics"][key] == pytest.approx(glob["metrics"][key], rel=1e-5, abs=1e-7), key
    for pname, value in glob["params"].items():
        torch.testing.assert_close(glob2["params"][pname], value, rtol=0, atol=1e-6, msg=pname)
    micro, micro2 = one["dapo_erc-T1-nested"], other["dapo_erc-T1-nested"]
    nll, nll2 = micro["metrics"]["actor/positive_nll"], micro2["metrics"]["actor/positive_nll"]
    assert abs(nll2 - nll) > 1e-3 * abs(nll), (nll, nll2)
    assert max((micro2["params"][n] - v).abs().max().item() for n, v in micro["params"].items()) > 1e-5
