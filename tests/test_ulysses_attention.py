"""Ulysses > 1 with an attention implementation verl's Ulysses does not cover is refused.

verl 0.9.1's Ulysses all-to-all lives in the flash-attention forward only; with sdpa or eager
each rank would attend over its own shard, silently, on a GPU as on a CPU. On erc_verl's CPU
platform sdpa is covered by erc_verl/cpu/ulysses.py (tests/test_layouts.py shows it exact).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from erc_verl import cli
from erc_verl.cpu.ulysses import block_causal_mask
from erc_verl.integration import ulysses_check
from erc_verl.integration.ulysses_check import UlyssesAttentionError, ulysses_attention_problem


def arr(attn=None, sp=4, loss_mode="dapo_erc"):
    model = {"override_config": {} if attn is None else {"attn_implementation": attn}}
    actor = {
        "ulysses_sequence_parallel_size": sp,
        "fsdp_config": {"ulysses_sequence_parallel_size": sp},
        "policy_loss": {"loss_mode": loss_mode},
    }
    return OmegaConf.create({"model": model, "actor": actor, "ref": {"fsdp_config": {}}})


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_uncovered_attention_with_ulysses_is_refused_on_gpu(attn):
    line = ulysses_attention_problem(arr(attn), platform="cuda")
    assert f"attn_implementation={attn}" in line and "ulysses_sequence_parallel_size=4" in line
    assert "override_config.attn_implementation=flash_attention_2" in line and "\n" not in line


@pytest.mark.parametrize(
    "attn, sp, platform",
    [
        (None, 4, "cuda"),  # verl's default, flash_attention_2
        ("flash_attention_2", 4, "cuda"),
        ("sdpa", 1, "cuda"),
        ("sdpa", 4, "cpu"),  # erc_verl's Ulysses-aware sdpa
    ],
)
def test_covered_layouts_pass(attn, sp, platform):
    assert ulysses_attention_problem(arr(attn, sp), platform=platform) is None


def test_eager_is_refused_on_cpu_too():
    assert ulysses_attention_problem(arr("eager"), platform="cpu") is not None


def test_check_refuses_sdpa_with_ulysses_off_the_cpu_platform(capsys, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    rc = cli.main(
        ["check", "dapo_erc_qwen7b", "-o", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"]
    )
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert rc == 1 and len(fails) == 1, out
    assert "attn_implementation=sdpa" in fails[0] and "flash_attention_2" in fails[0]


class _Worker:
    def __init__(self, config):
        self.config = config
        self.built = False

    def init_model(self):
        self.built = True


def test_actor_worker_refuses_before_building_the_model(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    # Like verl's ActorRolloutRefWorker, the class defines init_model itself.
    cls = type("ActorRolloutRefWorker", (_Worker,), {"init_model": _Worker.init_model})
    ulysses_check._wrap_init_model(cls)
    worker = cls(arr("sdpa"))
    with pytest.raises(UlyssesAttentionError, match="erc_verl: ulysses_sequence_parallel_size=4"):
        worker.init_model()
    assert not worker.built
    fine = cls(arr("flash_attention_2"))
    fine.init_model()
    assert fine.built


def test_block_causal_mask_separates_packed_sequences():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_ulysses_sdpa_refuses_a_call_without_position_ids(monkeypatch):
    import verl.utils.ulysses as verl_ulysses

    from erc_verl.cpu import ulysses

    monkeypatch.setattr(verl_ulysses, "get_ulysses_sequence_parallel_world_size", lambda *a: 2)
    q = k = v = torch.zeros(1, 4, 6, 8)
    module = torch.nn.Module()
    monkeypatch.setattr(ulysses, "_ORIGINAL", lambda *args, **kwargs: (q, None))  # plain sdpa over the shard
    with pytest.raises(RuntimeError, match="got no position_ids"):
        ulysses._ulysses_sdpa(module, q, k, v, None, position_ids=None)


def _exchange(rank, world, port, out):
    import torch.distributed as dist

    from erc_verl.cpu.ulysses import _make_all_to_all_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # rank r holds the sequence shard r (rows) of every head (columns): values name (rank, head)
        local = torch.tensor([[10.0 * rank + h for h in range(world * 2)]])
        mine = _make_all_to_all_tensor(None)(local, scatter_dim=1, gather_dim=0, group=dist.group.WORLD)
        torch.save(mine, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_verls_all_to_all_over_gloo_gives_each_rank_its_heads_of_every_shard(tmp_path):
    """verl/utils/ulysses.py:148 calls dist.all_to_all, which torch 2.11.0's gloo lacks; erc_verl's CPU
    exchange (an all-gather) hands rank r the head chunk r of every rank's shard, in rank order."""
    from erc_verl.rehearsal.ray_cluster import free_port

    world = 2
    torch.multiprocessing.spawn(_exchange, args=(world, free_port(), str(tmp_path)), nprocs=world)
    for rank in range(world):
        got = torch.load(tmp_path / f"{rank}.pt")
        want = torch.tensor([[10.0 * src + h for h in range(2 * rank, 2 * rank + 2)] for src in range(world)])
        torch.testing.assert_close(got, want)
