"""A bound on DAPO dynamic sampling in verl 0.9.1's V1 trainer, so a dead stream fails loudly.

verl 0.9.1's sync ReplayBuffer (verl/trainer/ppo/v1/replay_buffer.py, `sample`, the `while True`
loop) drops every group whose `algorithm.filter_groups.metric` is the same for all responses and
refills it from the data loader, with no limit: when every group is filtered (a model that is
always right or always wrong), a step never ends and nothing is printed. The legacy trainer's
`algorithm.filter_groups.max_num_gen_batches` bound is ignored by V1 (trainer_base.py warns so).

This wraps the replay buffer the trainer builds (`PPOTrainer._build_replay_buffer`) and counts
the groups filtered while one training batch is assembled. Past the limit it raises a
RuntimeError that says what happened and how to change the limit:
    algorithm.filter_groups.max_num_gen_batches = N > 0   -> N * data.train_batch_size groups
    otherwise                                             -> ERC_VERL_MAX_FILTERED_BATCHES
                                                             (default 20) * train_batch_size
Applied to ERC runs (an ERC loss mode, the monitor, positive_nll_coeff > 0) and to runs that ask
for a bound (max_num_gen_batches > 0, or ERC_VERL_MAX_FILTERED_BATCHES set); any other run keeps
verl's loop untouched. Installed at plugin load, applied after verl imports the V1 trainer module;
it changes nothing else (which groups are kept, refill sizes, metrics). ERC_VERL_REPLAY_POLL_S, when set, replaces
the buffer's 2 s poll interval (the CPU smoke run sets 0.2).
"""

from __future__ import annotations

import functools
import os

from .hooks import after_import, wrap

DEFAULT_MAX_FILTERED_BATCHES = 20


class DynamicSamplingExhausted(RuntimeError):
    """Every generated group was filtered for too long: the step cannot be filled."""


def filtered_group_limit(config) -> tuple[int, str]:
    """(max groups filtered while one batch is assembled, where the number came from)."""
    algorithm = config.get("algorithm", {}) or {}
    filter_groups = algorithm.get("filter_groups", None) or {}
    batch = int(config.data.train_batch_size)
    per_step = int(filter_groups.get("max_num_gen_batches", 0) or 0)
    if per_step > 0:
        return per_step * batch, f"algorithm.filter_groups.max_num_gen_batches={per_step}"
    env = int(os.environ.get("ERC_VERL_MAX_FILTERED_BATCHES", DEFAULT_MAX_FILTERED_BATCHES))
    return (
        env * batch,
        f"ERC_VERL_MAX_FILTERED_BATCHES={env} (default; or set algorithm.filter_groups.max_num_gen_batches)",
    )


def bound_replay_buffer(buffer, limit: int, source: str, metric: str | None):
    """Wrap one ReplayBuffer instance's `sample` and `_evict_terminal_groups`. Idempotent."""
    if getattr(buffer, "_erc_verl_bounded", False) or limit <= 0:
        return buffer
    if not hasattr(buffer, "_evict_terminal_groups") or not hasattr(buffer, "sample"):
        return buffer  # a custom sampler with its own loop: leave it alone
    state = {"filtered": 0, "counts": {}}
    evict, sample = buffer._evict_terminal_groups, buffer.sample

    @functools.wraps(evict)
    def counted_evict(global_steps, partition_id, eviction_reasons):
        result = evict(global_steps, partition_id, eviction_reasons)
        if partition_id != "val":
            _evicted, _stale, dapo_count, _metrics = result
            state["filtered"] += int(dapo_count)
            for value, n in dict(eviction_reasons[3]).items():
                state["counts"][value] = state["counts"].get(value, 0) + int(n)
            if state["filtered"] >= limit:
                seen = ", ".join(f"{metric}={v:g}: {n}" for v, n in sorted(state["counts"].items()))
                raise DynamicSamplingExhausted(
                    f"dynamic sampling (algorithm.filter_groups on {metric!r}) filtered {state['filtered']} "
                    f"groups while assembling the batch of step {global_steps} without filling it: every group's "
                    f"responses got the same {metric!r} ({seen}). The model is always right or always wrong on "
                    f"these prompts, so no group carries a learning signal. Limit {limit} groups, from {source}. "
                    "Use prompts of a difficulty the model sometimes solves, or turn filtering off "
                    "(algorithm.filter_groups.enable=false)."
                )
        return result

    @functools.wraps(sample)
    def counted_sample(global_steps, partition_id, batch_size):
        state["filtered"], state["counts"] = 0, {}
        return sample(global_steps, partition_id, batch_size)

    buffer._evict_terminal_groups = counted_evict
    buffer.sample = counted_sample
    buffer._erc_verl_bounded = True
    return buffer


def _make_build_replay_buffer(verl_build_replay_buffer):
    @functools.wraps(verl_build_replay_buffer)
    def _build_replay_buffer(self):
        buffer = verl_build_replay_buffer(self)
        poll = os.environ.get("ERC_VERL_REPLAY_POLL_S", "").strip()
        if poll and hasattr(buffer, "poll_interval"):
            # verl polls TransferQueue every 2 s while a batch fills (ReplayBuffer.poll_interval,
            # not in the config); the CPU smoke run's steps take less than that.
            buffer.poll_interval = float(poll)
        if getattr(buffer, "filter_groups_metric", None) is None:
            return buffer
        from .support import wants_dynamic_sampling_bound

        if not wants_dynamic_sampling_bound(self.config):
            return buffer  # not an ERC run and no bound asked for: verl's own loop, untouched
        limit, source = filtered_group_limit(self.config)
        return bound_replay_buffer(buffer, limit, source, buffer.filter_groups_metric)

    return _build_replay_buffer


def _patch_trainer_base(module) -> None:
    wrap(module.PPOTrainer, "_build_replay_buffer", _make_build_replay_buffer, "_erc_verl_bounded")


def install() -> None:
    after_import("verl.trainer.ppo.v1.trainer_base", _patch_trainer_base)
