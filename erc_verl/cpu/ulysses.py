"""Ulysses sequence parallelism for ``attn_implementation=sdpa``, on the CPU platform only.

verl 0.9.1 inserts its Ulysses all-to-all only into transformers' flash-attention forward
(``verl/models/transformers/monkey_patch.py``, ``_ulysses_flash_attention_forward``). A CPU has
no flash attention, so the CPU smoke uses sdpa, and with Ulysses > 1 every rank would silently
attend over its own shard of the packed sequence only. This module wraps transformers'
``sdpa`` attention function the same way verl wraps flash attention:

1. q, k and v (kv heads repeated up to the query heads) go through verl's own
   ``gather_seq_scatter_heads``: each rank then holds the whole sequence for 1/sp of the heads;
2. ``position_ids`` are all-gathered over the Ulysses group, and a block-diagonal causal mask
   is built from them (a new packed sequence starts where the position id is 0; verl's Ulysses
   padding starts one too);
3. attention runs with that mask, and verl's ``gather_heads_scatter_seq`` hands every rank its
   own shard back with all heads.

verl requires remove-padding (packed input, batch 1) whenever Ulysses > 1, so that is the only
layout handled.

verl's all-to-all itself (``verl/utils/ulysses.py:148``, ``all_to_all_tensor`` calls
``dist.all_to_all``) fails on torch 2.11.0's gloo backend ("Backend gloo does not support
alltoall"). On a gloo group :func:`install_all_to_all` makes the same exchange with an
all-gather, which gloo has: every rank gathers every rank's chunks and keeps the ones meant
for it, the order ``dist.all_to_all`` would give. Installed by :func:`install` from ``erc_verl.cpu.platform`` when
``VERL_PLATFORM=cpu``; with a Ulysses group of 1 (or none) the original sdpa function runs.
"""

from __future__ import annotations

import torch

_ORIGINAL = None


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(1, S) packed position ids -> (S, S) bool mask: same sequence and key at or before query."""
    pos = position_ids.reshape(-1)
    segment = torch.cumsum((pos == 0).to(torch.int64), dim=0)
    same = segment[:, None] == segment[None, :]
    idx = torch.arange(pos.numel(), device=pos.device)
    return same & (idx[None, :] <= idx[:, None])


def _ulysses_sdpa(module, query, key, value, attention_mask, *args, position_ids=None, **kwargs):
    from verl.utils.ulysses import (
        gather_heads_scatter_seq,
        gather_seq_scatter_heads,
        get_ulysses_sequence_parallel_group,
        get_ulysses_sequence_parallel_world_size,
    )

    sp = get_ulysses_sequence_parallel_world_size()
    if sp <= 1:
        return _ORIGINAL(module, query, key, value, attention_mask, *args, position_ids=position_ids, **kwargs)
    if position_ids is None:
        # Without them the packed sequences' boundaries are unknown, and plain sdpa over this rank's
        # shard would be the silent wrong answer this wrapper exists to prevent.
        raise RuntimeError(
            f"erc_verl's Ulysses sdpa attention (Ulysses size {sp}) got no position_ids, so it cannot tell the "
            "packed sequences apart; verl passes them with use_remove_padding=true, which Ulysses > 1 requires"
        )
    if query.size(0) != 1:
        raise RuntimeError(
            "erc_verl's Ulysses sdpa attention expects packed input (batch 1); verl requires "
            "use_remove_padding=true with ulysses_sequence_parallel_size > 1"
        )
    heads = query.size(1)
    if heads % sp:
        raise RuntimeError(f"Ulysses size {sp} must divide the number of attention heads ({heads})")
    # (b, h, s/n, d) -> (b, s/n, h, d), the layout verl's all-to-all helpers take.
    q = query.transpose(1, 2)
    k = torch.repeat_interleave(key, heads // key.size(1), dim=1).transpose(1, 2)
    v = torch.repeat_interleave(value, heads // value.size(1), dim=1).transpose(1, 2)
    q, k, v = (gather_seq_scatter_heads(t, seq_dim=1, head_dim=2) for t in (q, k, v))

    group = get_ulysses_sequence_parallel_group()
    gathered = [torch.empty_like(position_ids) for _ in range(sp)]
    torch.distributed.all_gather(gathered, position_ids.contiguous(), group=group)
    mask = block_causal_mask(torch.cat(gathered, dim=-1))

    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        dropout_p=dropout,
        scale=kwargs.get("scaling"),
    )
    # (b, h/n, s, d) -> (b, s, h/n, d) -> (b, s/n, h, d): sdpa's return layout.
    out = gather_heads_scatter_seq(out.transpose(1, 2), seq_dim=1, head_dim=2)
    return out.contiguous(), None


def _gloo_all_to_all(output_list, input_list, group) -> None:
    rank = torch.distributed.get_rank(group)
    stacked = torch.stack(input_list)
    gathered = [torch.empty_like(stacked) for _ in input_list]
    torch.distributed.all_gather(gathered, stacked, group=group)
    for src, chunks in enumerate(gathered):
        output_list[src].copy_(chunks[rank])


def _make_all_to_all_tensor(all_to_all_tensor):
    def wrapper(local_input, scatter_dim, gather_dim, group=None, async_op=False):
        from verl.utils.ulysses import get_ulysses_sequence_parallel_group

        group = get_ulysses_sequence_parallel_group() if group is None else group
        if torch.distributed.get_backend(group) != "gloo":
            return all_to_all_tensor(local_input, scatter_dim, gather_dim, group, async_op)
        n = torch.distributed.get_world_size(group)
        input_list = [t.contiguous() for t in torch.tensor_split(local_input, n, scatter_dim)]
        output_list = [torch.empty_like(input_list[0]) for _ in range(n)]
        _gloo_all_to_all(output_list, input_list, group)
        out = torch.cat(output_list, dim=gather_dim).contiguous()
        return (lambda: out) if async_op else out

    return wrapper


def install_all_to_all(module) -> None:
    """verl.utils.ulysses.all_to_all_tensor over gloo through an all-gather (idempotent)."""
    from erc_verl.integration.hooks import wrap

    wrap(module, "all_to_all_tensor", _make_all_to_all_tensor, "_erc_verl_cpu_all_to_all")


def install(_module=None) -> None:
    """Put the Ulysses-aware sdpa into transformers' attention registry (idempotent)."""
    global _ORIGINAL
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is _ulysses_sdpa:
        return
    _ORIGINAL = current
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _ulysses_sdpa
