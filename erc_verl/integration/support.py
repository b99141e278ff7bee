"""What ERC can gate accurately, written once: rules over a config, each returning one line
(the problem and its fix) or None.

Two kinds of config reach these rules:
- the trainer's whole config (`erc-verl check`, the trainers): `RULES`, via `problems(cfg)`;
- a worker's actor config (`actor_rollout_ref.actor`, at the first update): `ACTOR_RULES`, via
  `actor_problems(actor_cfg)`. Every actor rule is also in RULES, applied to the actor section.

Every rule but `settings_problem` applies only to an ERC run (`erc_run`): an ERC loss mode, the
entropy-ratio monitor, or the positive-sample NLL term. A run with none of them is verl's own run,
and erc_verl changes nothing in it (no wrapper alters its control flow, its dynamic sampling or its
trainer checks). `settings_problem` is the settings' own validation (erc_verl.settings), which the
worker's ERCPolicyLossConfig runs too, so both refuse with the same words.
"""

import os

from ..settings import select, settings

# The engines whose logits erc_verl's gate entropy is computed from (workers/engine/fsdp).
FSDP_STRATEGIES = ("fsdp", "fsdp2")
# verl's fused kernels compute the entropy without materialising the logits, in float32 with
# the textbook formula: relative error up to 1.0 (100%) for H < 1e-4 measured for its torch
# backend (benchmarks/results/entropy_accuracy_cpu.md). A run may accept that error by naming it.
FUSED_ENTROPY_MEASURED_REL_ERROR = 1.0


def _erc(actor_cfg):
    """The actor's ERCSettings; None when they do not validate (settings_problem says why)."""
    try:
        return settings(select(actor_cfg, "policy_loss"))
    except ValueError:
        return None


def erc_actor(actor_cfg) -> bool:
    """Whether this actor config uses ERC: an ERC mode, the monitor, or positive_nll_coeff > 0."""
    erc = _erc(actor_cfg)
    return erc is not None and erc.active


def erc_run(cfg) -> bool:
    """Whether the trainer's config is an ERC run (see erc_actor)."""
    return erc_actor(select(cfg, "actor_rollout_ref.actor"))


def wants_dynamic_sampling_bound(cfg) -> bool:
    """ERC runs, and any run that asks for a bound: algorithm.filter_groups.max_num_gen_batches > 0
    (which verl's V1 trainer ignores) or ERC_VERL_MAX_FILTERED_BATCHES in the environment."""
    if erc_run(cfg) or os.environ.get("ERC_VERL_MAX_FILTERED_BATCHES", "").strip():
        return True
    try:
        return int(select(cfg, "algorithm.filter_groups.max_num_gen_batches", 0) or 0) > 0
    except (TypeError, ValueError):
        return False


# ---- actor-level rules (worker side, and the actor section of the whole config) ----------------


def settings_problem(actor_cfg) -> str | None:
    """The policy_loss settings validate (erc_verl.settings): the same words as the worker's config."""
    try:
        settings(select(actor_cfg, "policy_loss"))
    except ValueError as exc:
        return str(exc)
    return None


def engine_problem(actor_cfg) -> str | None:
    if not erc_actor(actor_cfg):
        return None
    strategy = str(select(actor_cfg, "strategy", "fsdp"))
    if strategy in FSDP_STRATEGIES:
        return None
    return (
        f"actor_rollout_ref.actor.strategy={strategy}: erc_verl computes H_old and H_cur with its "
        f"accurate kernel in verl's FSDP engine only ({', '.join(FSDP_STRATEGIES)}); verl's other "
        "entropies lose small H (up to 100% relative error below 1e-4), which decides ERC's band. "
        "Fix: set actor_rollout_ref.actor.strategy=fsdp2."
    )


def fused_kernels_problem(actor_cfg) -> str | None:
    if not erc_actor(actor_cfg) or not bool(select(actor_cfg, "use_fused_kernels", False)):
        return None
    erc = _erc(actor_cfg)
    if erc.wants_entropy and erc.tooling.fused_entropy_accepted_rel_error < FUSED_ENTROPY_MEASURED_REL_ERROR:
        return (
            "actor_rollout_ref.model.use_fused_kernels=true: verl's fused kernel gives the only entropy "
            "there, measured at up to 100% relative error below H = 1e-4, which decides ERC's band. Fix: "
            "set actor_rollout_ref.model.use_fused_kernels=false, or accept that error with "
            "actor_rollout_ref.actor.policy_loss.fused_entropy_accepted_rel_error=1.0."
        )
    return None


def global_nll_problem(actor_cfg) -> str | None:
    """positive_nll_norm=global needs the mini-batch counts that only the runtime plumbing computes."""
    erc = _erc(actor_cfg)
    if erc is None or not erc.positive_nll or erc.algorithm.positive_nll_norm != "global":
        return None
    from .version import tree_is_patched

    if not tree_is_patched():
        return None
    from ..losses import GLOBAL_NORM_UNAVAILABLE

    return GLOBAL_NORM_UNAVAILABLE


ACTOR_RULES = (settings_problem, engine_problem, fused_kernels_problem, global_nll_problem)


def actor_problems(actor_cfg) -> list[str]:
    return [p for p in (rule(actor_cfg) for rule in ACTOR_RULES) if p]


# ---- whole-config rules -------------------------------------------------------------------------


def _on_actor(rule):
    def whole(cfg):
        return rule(select(cfg, "actor_rollout_ref.actor"))

    whole.__name__ = rule.__name__
    return whole


# verl 0.9.1's trainers, each either verified with ERC or refused (docs/algorithm.md, "Trainer
# modes", says where H_old comes from in each):
# - main_ppo's V1 trainer modes (verl/trainer/ppo/v1: trainer_sync.py, trainer_colocate_async.py and
#   trainer_separate_async.py register them; trainer.v1.trainer_mode picks one), verified through
#   main_ppo on CPU (tests/test_async_modes.py);
# - the v0 trainer (trainer.use_v1=false): verified, without dynamic sampling (v0_trainer_problem);
# - verl/experimental's one-step-off-policy and fully-async trainers: refused (ASYNC_TRAINER_PROBLEM).
V1_TRAINER_MODES = ("sync", "colocate_async", "separate_async")


def async_trainer_problem(cfg) -> str | None:
    """verl's experimental asynchronous trainers, and any V1 trainer mode not verified with ERC."""
    if not erc_run(cfg):
        return None
    if select(cfg, "async_training") is not None or select(cfg, "rollout.nnodes") is not None:
        return ASYNC_TRAINER_PROBLEM
    if not bool(select(cfg, "trainer.use_v1", True)):
        return None
    mode = str(select(cfg, "trainer.v1.trainer_mode", "sync"))
    if mode not in V1_TRAINER_MODES:
        return (
            f"trainer.v1.trainer_mode={mode} is not one of the V1 trainer modes verified with ERC "
            f"({', '.join(V1_TRAINER_MODES)}): which weights H_old comes from there is not known. "
            "Fix: trainer.v1.trainer_mode=sync, colocate_async or separate_async."
        )
    return None


ASYNC_TRAINER_PROBLEM = (
    "verl's one-step-off-policy and fully-async trainers (verl/experimental) are refused with ERC: they "
    "drop DAPO's dynamic sampling (algorithm.filter_groups is never read there), their configs default to "
    "bypass_mode=true (no old-log-prob pass, so no H_old), and their separation trainer drops the "
    "old-log-prob pass's entropy (verl/experimental/separation/ray_trainer.py). Fix: run verl's main_ppo "
    "(python -m verl.trainer.main_ppo) with trainer.v1.trainer_mode=colocate_async or separate_async, "
    "its asynchronous modes verified with ERC."
)


def bypass_problem(cfg) -> str | None:
    if not erc_run(cfg) or not _erc(select(cfg, "actor_rollout_ref.actor")).wants_entropy:
        return None
    if bool(select(cfg, "algorithm.rollout_correction.bypass_mode", False)):
        return (
            "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob pass, which is where "
            "H_old comes from. Fix: set algorithm.rollout_correction.bypass_mode=false."
        )
    return None


def v0_trainer_problem(cfg) -> str | None:
    """Why the v0 trainer would silently run another experiment than this ERC config, or None."""
    if not erc_run(cfg) or bool(select(cfg, "trainer.use_v1", True)):
        return None
    if bool(select(cfg, "algorithm.filter_groups.enable", False)):
        return V0_DYNAMIC_SAMPLING_PROBLEM
    return None


V0_DYNAMIC_SAMPLING_PROBLEM = (
    "trainer.use_v1=false runs verl's v0 trainer, which has no dynamic sampling: it would "
    "silently drop algorithm.filter_groups and train on data.gen_batch_size prompts per step. "
    "Fix: set trainer.use_v1=true (the recipes' trainer), or algorithm.filter_groups.enable=false "
    "to run without dynamic sampling on purpose."
)

RULES = (
    *(_on_actor(rule) for rule in ACTOR_RULES),
    async_trainer_problem,
    bypass_problem,
    v0_trainer_problem,
)


def problems(cfg) -> list[str]:
    """Every rule's line for the trainer's whole config (empty: ERC can gate this run)."""
    return [p for p in (rule(cfg) for rule in RULES) if p]
