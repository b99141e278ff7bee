"""DAPO dynamic sampling fails with a clear message instead of refilling forever
(erc_verl/integration/dynamic_sampling.py), and the CPU trainer fixes of erc_verl/cpu/platform.py."""

from collections import Counter

import pytest
from omegaconf import OmegaConf

from erc_verl.integration.dynamic_sampling import (
    DynamicSamplingExhausted,
    bound_replay_buffer,
    filtered_group_limit,
)


class _AllFilteredBuffer:
    """The shape of verl 0.9.1's sync ReplayBuffer.sample loop when every group is filtered."""

    filter_groups_metric = "acc"

    def __init__(self):
        self.refills = 0

    def _evict_terminal_groups(self, global_steps, partition_id, eviction_reasons):
        n = len(eviction_reasons[1])
        return set(eviction_reasons[1]), 0, n, {}

    def sample(self, global_steps, partition_id, batch_size):
        while True:  # verl's loop: evict, refill, poll, never give up
            uids = {f"u{self.refills}_{i}" for i in range(batch_size)}
            self._evict_terminal_groups(global_steps, partition_id, (set(), uids, set(), Counter({0.0: batch_size})))
            self.refills += 1
            if self.refills > 10_000:
                raise AssertionError("spun")


def test_all_equal_stream_fails_with_a_message():
    buf = bound_replay_buffer(_AllFilteredBuffer(), limit=32, source="test", metric="acc")
    with pytest.raises(DynamicSamplingExhausted, match=r"filtered 32 groups.*acc=0: 32.*filter_groups.enable=false"):
        buf.sample(1, "train", 8)
    assert buf.refills == 3  # raised on the 4th batch of 8 filtered groups
    # the count starts again with every batch
    with pytest.raises(DynamicSamplingExhausted):
        buf.sample(2, "train", 8)
    assert buf.refills == 6


def test_limit_from_config(monkeypatch):
    cfg = OmegaConf.create(
        {"data": {"train_batch_size": 128}, "algorithm": {"filter_groups": {"max_num_gen_batches": 3}}}
    )
    assert filtered_group_limit(cfg)[0] == 384
    cfg.algorithm.filter_groups.max_num_gen_batches = 0
    monkeypatch.setenv("ERC_VERL_MAX_FILTERED_BATCHES", "5")
    assert filtered_group_limit(cfg)[0] == 640


def test_trainer_builds_a_bounded_buffer():
    from verl.trainer.ppo.v1 import trainer_base

    import erc_verl  # noqa: F401

    assert getattr(trainer_base.PPOTrainer._build_replay_buffer, "_erc_verl_bounded", False)


def test_cpu_backend_string():
    from erc_verl.cpu.platform import _cpu_backend

    assert _cpu_backend("cpu:gloo,cpu:gloo") == "gloo"
    assert _cpu_backend(None) == "gloo"
    assert _cpu_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
