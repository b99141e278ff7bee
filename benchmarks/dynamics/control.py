"""The random-drop control: PPO-clip with a random token gate at a given keep rate.

It asks whether ERC's effect comes from WHICH tokens the entropy-ratio band cuts or only from
HOW MANY: each response token keeps its gradient with probability p, drawn independently of
anything the policy does, and p is set by the study to the keep fraction the ERC run measured
at the same step and mini-batch. The gate is the plugin's own `erc_gate` (stop the gradient
of log_prob, keep the forward value and the token in the loss denominator), so the control
differs from `dapo_erc` only in how the kept tokens are chosen.

Registered with verl's `register_policy_loss` as `random_drop` by the study, never by the plugin.
"""

from __future__ import annotations

import torch

LOSS_MODE = "random_drop"
KEEP_METRIC = "actor/random_keep_frac"


class Schedule:
    """Keep probabilities, one per loss call in order (one call per mini-batch), and what was kept."""

    def __init__(self):
        self.targets: list[float] = []
        self.calls = 0
        self.kept: list[float] = []
        self.gen = torch.Generator()

    def start_step(self, targets: list[float], seed: int) -> None:
        self.targets = list(targets)
        self.calls = 0
        self.kept = []
        self.gen.manual_seed(seed)

    def next_p(self) -> float:
        if not self.targets:
            raise RuntimeError("random_drop: no keep rate set for this step (Schedule.start_step)")
        # More calls than targets only if micro-batches split a mini-batch: reuse the last.
        p = self.targets[min(self.calls, len(self.targets) - 1)]
        self.calls += 1
        return p


SCHEDULE = Schedule()


def random_drop_loss(
    old_log_prob,
    log_prob,
    advantages,
    response_mask,
    loss_agg_mode="token-mean",
    config=None,
    rollout_is_weights=None,
    **kwargs,
):
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    from erc_verl.losses import erc_gate

    p = SCHEDULE.next_p()
    mask = response_mask.bool()
    draw = torch.rand(log_prob.shape, generator=SCHEDULE.gen)
    keep = mask & (draw < p)
    pg_loss, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=erc_gate(log_prob, keep),
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
        **kwargs,
    )
    frac = float(keep.sum()) / max(int(mask.sum()), 1)
    SCHEDULE.kept.append(frac)
    metrics[KEEP_METRIC] = frac
    return pg_loss, metrics


def register() -> None:
    """Register `random_drop` with verl (idempotent)."""
    from verl.trainer.ppo import core_algos

    if core_algos.POLICY_LOSS_REGISTRY.get(LOSS_MODE) is not random_drop_loss:
        core_algos.register_policy_loss(LOSS_MODE)(random_drop_loss)
