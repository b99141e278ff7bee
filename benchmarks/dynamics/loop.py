"""One GRPO run of one variant through verl's engine TrainingWorker (tests/harness).

Per step: 16 prompts (4-token chain prefixes) x 4 responses of 32 tokens sampled from the
current weights (the harness's `generate`), rewards from the grammar, GRPO advantages from
verl's `compute_grpo_outcome_advantage`, the old-log-prob pass with entropy, then verl's
`train_mini_batch` over MINI_BATCHES mini-batches (all but the first off-policy). ERC comes
from the plugin's registered losses; ERC runs are audited with erc_verl.rehearsal.gate_audit
(d pg_loss / d log_prob on every out-of-band token).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from . import control, task

PROMPTS = 16
GROUP = 4
MINI_BATCHES = 8
TEMPERATURE = 1.0
CLIP_LOW, CLIP_HIGH, CLIP_C = 0.2, 0.28, 10.0
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
VARIANTS = ("dapo_erc", "random_drop", "vanilla", "gppo", "gppo_erc")  # dapo_erc first: the control needs it
ERC_VARIANTS = ("dapo_erc", "gppo_erc")


def _tw():
    from harness import training_worker

    return training_worker


def _audit(mode: str, path: str) -> None:
    """Wrap the registered ERC loss `mode` with the project's gate-audit spy, writing to `path`."""
    from verl.trainer.ppo import core_algos

    from erc_verl.rehearsal import gate_audit

    real = core_algos.POLICY_LOSS_REGISTRY[mode]
    real = getattr(real, "_study_real", real)
    spy = gate_audit.make_spy(mode, real, path)
    spy._study_real = real
    core_algos.POLICY_LOSS_REGISTRY[mode] = spy


def run(
    variant: str,
    setting: dict,
    seed: int,
    model_dir: str,
    steps: int,
    erc_keep: list[list[float]] | None = None,
    grammar: task.Grammar | None = None,
    log=print,
) -> dict:
    """Train one variant for `steps` steps; returns per-step series and the gate audit."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from erc_verl.rehearsal import gate_audit

    tw = _tw()
    grammar = grammar or task.Grammar()
    seqs = PROMPTS * GROUP
    mbs = seqs // MINI_BATCHES
    policy_loss = {
        "_target_": ERC_TARGET,
        "loss_mode": variant,
        "entropy_ratio_low": setting["band"][0],
        "entropy_ratio_high": setting["band"][1],
        "positive_nll_coeff": setting["nll"],
        "entropy_ratio_monitor": variant not in ERC_VARIANTS,
    }
    torch.manual_seed(seed)
    worker = tw.build_actor_worker(
        model_dir,
        policy_loss=policy_loss,
        lr=setting["lr"],
        clip_ratio_low=CLIP_LOW,
        clip_ratio_high=CLIP_HIGH,
        clip_ratio_c=CLIP_C,
        micro_batch_size=mbs,
        infer_micro_batch_size=seqs,
        ppo_mini_batch_size=mbs,
        temperature=TEMPERATURE,
    )
    control.register()
    audit_path = None
    if variant in ERC_VARIANTS:
        fd, audit_path = tempfile.mkstemp(prefix=f"erc_study_audit_{variant}_", suffix=".jsonl")
        os.close(fd)
        _audit(variant, audit_path)
    if variant == control.LOSS_MODE and not erc_keep:
        raise ValueError("random_drop needs the ERC run's per-step keep fractions (run dapo_erc first)")

    series = {
        k: []
        for k in (
            "reward",
            "valid",
            "entropy",
            "keep",
            "keep_mb",
            "control_keep",
            "control_keep_mb",
            "ppo_kl",
            "clipfrac",
            "clipfrac_lower",
            "grad_norm",
            "perfect",
        )
    }
    for step in range(steps):
        gen = torch.Generator().manual_seed(1_000_003 * seed + step)
        prompts = grammar.sample_chains(PROMPTS, task.PROMPT_LEN, gen).tolist()
        responses = tw.generate(
            worker, prompts, n=GROUP, max_new_tokens=task.RESPONSE_LEN, temperature=TEMPERATURE, seed=7919 * seed + step
        )
        rows = [prompts[i // GROUP] for i in range(seqs)]
        scores = [grammar.score(p, r) for p, r in zip(rows, responses, strict=False)]
        batch = tw.make_batch(rows, responses, max_response_len=task.RESPONSE_LEN)
        mask = batch["response_mask"].float()
        old_log_prob, entropy = tw.compute_old_log_prob(worker, batch)
        rewards = torch.zeros_like(mask)
        lengths = mask.sum(dim=1).long()
        for i, (r, _) in enumerate(scores):
            rewards[i, lengths[i] - 1] = r
        advantages, _ = compute_grpo_outcome_advantage(rewards, mask, np.array([i // GROUP for i in range(seqs)]))
        if variant == control.LOSS_MODE:
            control.SCHEDULE.start_step(erc_keep[step], seed=31 * seed + step)
        extra = {"rm_scores": rewards} if setting["nll"] else None
        m = tw.update_actor(
            worker, batch, old_log_prob, entropy, advantages, ppo_mini_batch_size=mbs, extra=extra, raw=True
        )

        def mb(key, m=m):
            return [float(v) for v in m.get(key, [])]

        series["reward"].append(float(np.mean([s[0] for s in scores])))
        series["valid"].append(float(np.mean([s[1] for s in scores])))
        series["perfect"].append(float(np.mean([s[0] == 1.0 for s in scores])))
        series["entropy"].append(float((entropy * mask).sum() / mask.sum()))
        series["keep_mb"].append(mb("actor/erc_keep_frac"))
        series["keep"].append(float(np.mean(mb("actor/erc_keep_frac"))))
        if variant == control.LOSS_MODE:
            series["control_keep_mb"].append(mb(control.KEEP_METRIC))
            series["control_keep"].append(float(np.mean(mb(control.KEEP_METRIC))))
        series["ppo_kl"].append(float(np.mean(mb("actor/ppo_kl"))))
        series["clipfrac"].append(float(np.mean(mb("actor/pg_clipfrac"))))
        series["clipfrac_lower"].append(float(np.mean(mb("actor/pg_clipfrac_lower"))))
        series["grad_norm"].append(mb("grad_norm"))
        log(
            f"  {variant} seed {seed} step {step}: reward {series['reward'][-1]:.3f} entropy "
            f"{series['entropy'][-1]:.3f} keep {series['keep'][-1]:.3f} kl {series['ppo_kl'][-1]:.4f}"
        )

    out = {"variant": variant, "seed": seed, "steps": steps, "series": series}
    if audit_path:
        totals = gate_audit.read_audit(audit_path).get(variant, {})
        out["audit"] = {
            k: totals.get(k)
            for k in (
                "calls",
                "checked",
                "unchecked",
                "out_of_band",
                "out_of_band_with_grad",
                "in_band",
                "in_band_with_grad",
                "max_abs_grad_out_of_band",
            )
        }
        os.unlink(audit_path)
    del worker
    return out
