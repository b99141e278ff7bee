"""The check itself: compose a recipe, build verl's config classes from it, apply every rule.

Order (what verl 0.9.1's `main_ppo` and the trainer/workers do to the config before GPU work):
  1. every override names a key that exists (keys.py), then Hydra composition on verl's
     `ppo_trainer` with placeholders for what the user supplies;
  2. no mandatory (`???`) value left, every interpolation resolvable; value types (values.py);
  3. `import erc_verl`, then the policy_loss.loss_mode is in verl's POLICY_LOSS_REGISTRY and an
     ERC mode is configured through ERCPolicyLossConfig;
  4. verl's config dataclasses built with `omega_conf_to_dataclass`, node by node, each node's
     keys first compared with its class's fields (the reference model's from the node verl's
     worker builds it from, log-prob keys renamed), and the reward manager class;
  5. the cluster layout (layout.py) and the extra rules in rules.RULES;
  6. verl's own `validate_config` (what main_ppo runs before Ray starts);
  7. the reward function loads the way verl loads it, and the DAPO filter metric is one of its keys.
A recipe that passes has not been trained: it composes and builds, nothing more.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import warnings
from pathlib import Path

from .compose import PLACEHOLDER_OVERRIDES, compose_recipe
from .errors import RecipeError, brief, exception_chain
from .keys import check_node_fields, check_override_keys, field_named_in
from .layout import check_cluster
from .paths import check_model_path
from .rules import RULES
from .values import type_problems, verl_defaults

# `???` values verl's own defaults leave unset in sections a recipe does not enable.
_UNUSED_MISSING = {"reward.reward_model.rollout.name": "reward.reward_model.enable"}

# A response the reward function is called with, to learn which metric keys it returns.
_PROBE = {"data_source": "check", "solution_str": "<think>x</think> \\boxed{1}", "ground_truth": "1"}


def _full_key(exc: BaseException, path: str) -> str | None:
    """The key an OmegaConf error carries (`full_key`, relative to the node converted)."""
    for e in exception_chain(exc):
        key = getattr(e, "full_key", None)
        if key:
            key = str(key).strip(".")
            return key if not path or key.startswith(path + ".") or key == path else f"{path}.{key}"
    return None


def error_at(exc: BaseException, cfg, path: str) -> RecipeError:
    """A RecipeError for an exception raised while building the node at `path`."""
    message = brief(exc)
    key = _full_key(exc, path) or field_named_in(" ".join(str(e) for e in exception_chain(exc)), cfg, path)
    return RecipeError(key, message)


def _build(cfg, path: str, dataclass_type=None):
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    check_node_fields(cfg, path)
    node = OmegaConf.select(cfg, path)
    try:
        return omega_conf_to_dataclass(node, dataclass_type)
    except Exception as exc:
        raise error_at(exc, cfg, path) from exc


# verl 0.9.1 builds the reference model's ActorConfig from a copy of `actor_rollout_ref.ref` with
# its log-prob keys renamed to the actor's names and the actor's mini-batch size
# (verl/workers/engine_workers.py, ActorRolloutRefWorker.init_model, lines 545-552).
REF_RENAMES = {
    "log_prob_micro_batch_size": "ppo_micro_batch_size",
    "log_prob_micro_batch_size_per_gpu": "ppo_micro_batch_size_per_gpu",
    "log_prob_use_dynamic_bsz": "use_dynamic_bsz",
    "log_prob_max_token_len_per_gpu": "ppo_max_token_len_per_gpu",
}
_REF_DEFAULTS = {"log_prob_use_dynamic_bsz": False}


def _build_ref(cfg):
    """The reference model's config, built from the node verl's worker builds it from."""
    from omegaconf import OmegaConf, open_dict

    path = "actor_rollout_ref.ref"
    worker_cfg = cfg.copy()
    with open_dict(worker_cfg):
        ref = worker_cfg.actor_rollout_ref.ref
        ref.ppo_mini_batch_size = OmegaConf.select(worker_cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
        for verl_key, actor_key in REF_RENAMES.items():
            ref[actor_key] = ref.pop(verl_key, _REF_DEFAULTS.get(verl_key))
    try:
        return _build(worker_cfg, path)
    except RecipeError as exc:
        # Name the key the user wrote, not the one verl renamed it to.
        key = exc.key
        for verl_key, actor_key in REF_RENAMES.items():
            if key == f"{path}.{actor_key}":
                key = f"{path}.{verl_key}"
        raise RecipeError(key, exc.message) from exc


def _without_vllm_lora_rank_check(cfg):
    """(the config validate_config is given, what it could not check here).

    With LoRA and the vLLM rollout, verl's validate_config (verl/utils/config.py, end) imports vLLM
    to read its largest LoRA rank; a machine without vLLM (this check runs on CPU) cannot do that
    one step. The copy it then gets has model.lora.merge=true, which verl reads as "no rank check";
    every other check runs, and the OK line says which one did not.
    """
    import importlib.util

    from omegaconf import OmegaConf

    model = OmegaConf.select(cfg, "actor_rollout_ref.model")
    lora = model.get("lora", None) or {}
    rank = lora.get("rank", 0) or model.get("lora_rank", 0) or 0
    if (
        rank <= 0
        or lora.get("merge", False)
        or OmegaConf.select(cfg, "actor_rollout_ref.rollout.name") != "vllm"
        or importlib.util.find_spec("vllm") is not None
    ):
        return cfg, None
    copy = cfg.copy()
    OmegaConf.update(copy, "actor_rollout_ref.model.lora.merge", True, force_add=True)
    return copy, f"lora rank {rank} against vLLM's largest LoRA rank (vLLM is not installed here)"


def _check_model_keys(cfg, model_path: str | None):
    """HFModelConfig loads the tokenizer in __post_init__: without a real model, check keys and types only."""
    from omegaconf import OmegaConf
    from verl.workers.config import HFModelConfig

    path = "actor_rollout_ref.model"
    if model_path:
        check_model_path(model_path, "--model-path")
        OmegaConf.update(cfg, f"{path}.path", model_path)
        return _build(cfg, path)
    node = OmegaConf.to_container(OmegaConf.select(cfg, path), resolve=True)
    node.pop("_target_", None)
    try:
        OmegaConf.merge(OmegaConf.structured(HFModelConfig), node)
    except Exception as exc:
        raise error_at(exc, cfg, path) from exc
    return None


def check_config(cfg, model_path: str | None = None, check_paths: bool = False) -> dict:
    """Run checks 2-7 on a composed config; raise RecipeError on the first failure.

    Returns a summary of what the run will do (for the OK line).
    """
    from omegaconf import OmegaConf

    # 2. interpolations (e.g. ${oc.env:MODEL_PATH} with the variable unset), mandatory values
    try:
        OmegaConf.to_container(cfg, resolve=True)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except Exception as exc:
        raise error_at(exc, cfg, "") from exc
    for key in missing:
        gate = _UNUSED_MISSING.get(key)
        if gate is not None and not OmegaConf.select(cfg, gate, default=False):
            continue
        raise RecipeError(key, "mandatory value (???) not set")
    # value types, against verl's own defaults (trainer.total_epochs=abc composes fine)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for key, message in type_problems(resolved, verl_defaults()):
        raise RecipeError(key, message)

    # 3. the plugin and its loss modes (import erc_verl registers them, as in every verl process)
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    import erc_verl

    loss_key = "actor_rollout_ref.actor.policy_loss.loss_mode"
    mode = OmegaConf.select(cfg, loss_key)
    if mode not in core_algos.POLICY_LOSS_REGISTRY:
        known = sorted(core_algos.POLICY_LOSS_REGISTRY)
        near = difflib.get_close_matches(str(mode), known, n=1, cutoff=0.6)
        fix = f"; fix: -o {loss_key}={near[0]}" if near else ""
        raise RecipeError(loss_key, f"{mode!r} is not a registered policy loss (registered: {', '.join(known)}){fix}")

    # 4. verl's config dataclasses
    actor = _build(cfg, "actor_rollout_ref.actor")
    if mode in erc_verl.ERC_LOSS_MODES and not isinstance(actor.policy_loss, erc_verl.ERCPolicyLossConfig):
        raise RecipeError(
            "actor_rollout_ref.actor.policy_loss._target_",
            f"loss_mode {mode!r} needs _target_: erc_verl.ERCPolicyLossConfig (got {type(actor.policy_loss).__name__})",
        )
    _build(cfg, "actor_rollout_ref.rollout")
    _check_model_keys(cfg, model_path)
    use_ref = bool(need_reference_policy(cfg))
    with warnings.catch_warnings():
        # verl warns that GRPO-style runs have no critic: intended in every paper recipe.
        warnings.filterwarnings("ignore", message="Disabled critic")
        use_critic = bool(need_critic(cfg))
    if use_ref:
        _build_ref(cfg)
    if use_critic:
        _build(cfg, "critic")
    _build(cfg, "algorithm")
    _build(cfg, "distillation")
    # verl 0.9.1 never builds the `reward` node as a dataclass (its RewardManagerConfig cannot be
    # instantiated: __post_init__ calls a missing super().__post_init__); the trainer reads it as
    # a DictConfig and resolves the manager class like this:
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    try:
        resolve_reward_manager_cls(cfg)
    except Exception as exc:
        raise error_at(exc, cfg, "reward.reward_manager") from exc

    # 5. what verl rejects later, on the cluster
    check_cluster(cfg, use_ref, check_paths)
    for rule in RULES:
        problem = rule(cfg)
        if problem:
            raise problem if isinstance(problem, RecipeError) else RecipeError(rule.__name__, problem)

    # 6. what main_ppo validates before starting Ray
    from verl.utils.config import validate_config

    validated, not_checked = _without_vllm_lora_rank_check(cfg)
    try:
        # validate_config prints a success line per recipe; keep check's own output readable.
        with contextlib.redirect_stdout(io.StringIO()):
            validate_config(validated, use_reference_policy=use_ref, use_critic=use_critic)
    except Exception as exc:
        raise error_at(exc, cfg, "") from exc

    # 7. the reward function, loaded the way verl loads it, and the DAPO filter metric
    from verl.trainer.ppo.reward import get_custom_reward_fn

    try:
        reward_fn = get_custom_reward_fn(cfg)
    except Exception as exc:
        raise RecipeError("reward.custom_reward_function.path", brief(exc)) from exc
    reward_keys = {"reward"}
    if reward_fn is not None:
        result = reward_fn(**_PROBE)
        reward_keys |= set(result) if isinstance(result, dict) else {"acc"}
    filter_groups = OmegaConf.select(cfg, "algorithm.filter_groups", default=None)
    if filter_groups is not None and filter_groups.get("enable", False):
        metric = filter_groups.get("metric")
        if metric not in reward_keys:
            raise RecipeError(
                "algorithm.filter_groups.metric",
                f"{metric!r} is not produced by the reward (available: {', '.join(sorted(reward_keys))})",
            )

    from erc_verl.settings import settings

    erc = settings(actor.policy_loss)
    return {
        "loss_mode": mode,
        "clip": f"{actor.clip_ratio_low}/{actor.clip_ratio_high}/c={actor.clip_ratio_c}",
        "erc_band": "/".join(map(str, erc.band)) if erc.declared else "None/None",
        "monitor": erc.tooling.entropy_ratio_monitor if erc.declared else None,
        "critic": use_critic,
        "ref": use_ref,
        **({"not checked here": not_checked} if not_checked else {}),
    }


@functools.lru_cache(maxsize=16)
def _base(config_dir: str, name: str):
    """The recipe with placeholders only: the keys overrides are checked against (read-only)."""
    return compose_recipe(Path(config_dir), name, PLACEHOLDER_OVERRIDES)


def check_recipe(config_dir: Path, name: str, overrides=(), model_path: str | None = None) -> dict:
    """Compose one recipe with placeholders and check it; raise RecipeError on failure."""
    if overrides:
        try:
            base = _base(str(config_dir), name)
        except Exception as exc:
            raise RecipeError("<compose>", brief(exc)) from exc
        check_override_keys(base, overrides)
    try:
        cfg = compose_recipe(config_dir, name, [*PLACEHOLDER_OVERRIDES, *overrides])
    except Exception as exc:
        raise RecipeError("<compose>", brief(exc)) from exc
    return check_config(cfg, model_path, check_paths=True)
