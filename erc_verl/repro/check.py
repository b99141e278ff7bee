"""`erc-verl check [RECIPE ...]`: compose recipes on verl's config and build it, on CPU, no Ray.

For each recipe this does what verl 0.9.1's `main_ppo` and the trainer/workers do to the config
before any GPU work, and stops at the first key that would fail there:
  1. Hydra composition of the recipe on verl's `ppo_trainer` (pkg://verl.trainer.config), with
     placeholder values for what the user supplies (paths, node count, GPUs per node);
  2. no mandatory (`???`) value left, every interpolation resolvable;
  3. `import erc_verl`, then the policy_loss.loss_mode is in verl's POLICY_LOSS_REGISTRY and an
     ERC mode is configured through ERCPolicyLossConfig;
  4. verl's config dataclasses built with `omega_conf_to_dataclass`, node by node (actor, which
     instantiates the policy_loss `_target_` and so runs ERCPolicyLossConfig validation; rollout;
     model keys; ref/critic when enabled; algorithm; distillation) and the reward manager class;
  5. what verl rejects later, on the cluster, checked here with the same rules (see
     `check_cluster`): value types against verl's defaults, the world size against Ulysses and
     rollout tensor parallelism, the PPO mini-batch against the data-parallel size, the dynamic
     batch token budget against the longest sequence, the v0 trainer with dynamic sampling, and
     whether a model path given on the command line exists;
  6. verl's own `validate_config` (what main_ppo runs before Ray starts);
  7. the reward function loads the way verl loads it, and the DAPO filter metric is one of its keys.
A recipe that passes has not been trained: it composes and builds, nothing more.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import warnings
from pathlib import Path

from .errors import UserError

# The value every check substitutes for MODEL_PATH (not a path anyone has).
PLACEHOLDER_MODEL = "/placeholder/model"

# Placeholders for the values a user supplies (the launcher passes the real ones the same way,
# as explicit overrides). Paper hardware: 8 nodes x 8 GPUs.
PLACEHOLDER_OVERRIDES = (
    f"actor_rollout_ref.model.path={PLACEHOLDER_MODEL}",
    "data.train_files=/placeholder/data/klear_mathsub_30k.parquet",
    "data.val_files=[/placeholder/data/aime2024.parquet,/placeholder/data/aime2025.parquet]",
    "trainer.nnodes=8",
    "trainer.n_gpus_per_node=8",
    "trainer.default_local_dir=/placeholder/ckpt",
)

# `???` values verl's own defaults leave unset in sections a recipe does not enable.
_UNUSED_MISSING = {"reward.reward_model.rollout.name": "reward.reward_model.enable"}

# A response the reward function is called with, to learn which metric keys it returns.
_PROBE = {"data_source": "check", "solution_str": "<think>x</think> \\boxed{1}", "ground_truth": "1"}


class RecipeError(Exception):
    """One failed check: the offending config key and why."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def default_recipes_dir() -> Path | None:
    """recipes/ of the source checkout this package runs from, else ./recipes."""
    env = os.environ.get("ERC_VERL_RECIPES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "recipes", Path.cwd() / "recipes"]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def resolve_recipe(arg: str, recipes_dir: Path | None) -> tuple[Path, str]:
    """(config dir, config name) for a recipe name or a path to a recipe yaml."""
    path = Path(arg)
    if arg.endswith(".yaml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {arg}")
        return path.resolve().parent, path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if recipes_dir is None:
        raise FileNotFoundError("no recipes folder found: pass --recipes-dir")
    if not (recipes_dir / f"{arg}.yaml").is_file():
        known = ", ".join(list_recipes(recipes_dir)) or "none"
        raise FileNotFoundError(f"no recipe {arg!r} in {recipes_dir} (known: {known})")
    return recipes_dir.resolve(), arg


def list_recipes(recipes_dir: Path) -> list[str]:
    """Top-level recipes (the shared pieces live in sub-folders)."""
    return sorted(p.name[: -len(".yaml")] for p in recipes_dir.glob("*.yaml"))


def compose_recipe(config_dir: Path, name: str, overrides=()):
    """The recipe composed by Hydra exactly as `main_ppo --config-path DIR --config-name NAME` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def _exception_chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def offending_key(exc: BaseException, node_path: str, cfg) -> str:
    """Best guess at the full config key an exception is about.

    OmegaConf errors carry `full_key` (relative to the node converted); verl's and erc_verl's
    ValueErrors name the key in their message (e.g. `policy_loss.entropy_ratio_low must ...`);
    a dataclass given an unknown field says `unexpected keyword argument 'foo'`.
    """
    text = " ".join(str(e) for e in _exception_chain(exc))
    key = _named_key(exc, text, node_path, cfg)
    unknown = re.search(r"unexpected keyword argument '(\w+)'", text) or re.search(r"Key '(\w+)' not in", text)
    if unknown and not key.endswith("." + unknown.group(1)):
        key = f"{key}.{unknown.group(1)}" if key != "<config>" else unknown.group(1)
    return key


def _named_key(exc: BaseException, text: str, node_path: str, cfg) -> str:
    """The most specific existing config key the error names, else the node it came from."""
    from omegaconf import OmegaConf

    def join(key: str) -> str:
        key = key.strip(".")
        if not node_path or key == node_path or key.startswith(node_path + "."):
            return key
        return f"{node_path}.{key}"

    def exists(key: str) -> bool:
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent, default=None, throw_on_resolution_failure=False) if parent else cfg
            return node is not None and OmegaConf.is_dict(node) and leaf in node
        except Exception:  # a broken interpolation on the way: not a key we can name
            return False

    base = node_path
    for e in _exception_chain(exc):
        full_key = getattr(e, "full_key", None)
        if full_key:
            base = join(str(full_key))
            break
    if cfg is None:
        return base or "<config>"
    candidates = []
    for match in re.findall(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)", text):
        candidates += [join(match), match, f"{base}.{match}" if base else match]
    # "Invalid loss_agg_mode: bad": a bare field name of the node being built.
    for word in re.findall(r"[A-Za-z_]\w*_\w+", text):
        if base:
            candidates.append(f"{base}.{word}")
    found = [c for c in candidates if exists(c)]
    if found:
        return max(found, key=len)
    return base or "<config>"


def _message(exc: BaseException) -> str:
    parts = []
    for e in _exception_chain(exc):
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if line not in parts:
            parts.append(f"{type(e).__name__}: {line}")
    return " <- ".join(parts[:3])


def _build(cfg, path: str, dataclass_type=None):
    from omegaconf import OmegaConf

    from verl.utils.config import omega_conf_to_dataclass

    node = OmegaConf.select(cfg, path)
    try:
        return omega_conf_to_dataclass(node, dataclass_type)
    except Exception as exc:
        raise RecipeError(offending_key(exc, path, cfg), _message(exc)) from exc


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
        raise RecipeError(offending_key(exc, path, cfg), _message(exc)) from exc
    return None


# --- what verl rejects later, on the cluster --------------------------------------------------


_VERL_DEFAULTS = None


def _verl_defaults():
    """verl 0.9.1's own ppo_trainer config, resolved (the types its code expects), cached."""
    global _VERL_DEFAULTS
    if _VERL_DEFAULTS is None:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        GlobalHydra.instance().clear()
        with initialize_config_module("verl.trainer.config", version_base=None):
            base = compose("ppo_trainer")
        _VERL_DEFAULTS = OmegaConf.to_container(base, resolve=False)
    return _VERL_DEFAULTS



def _type_problems(values, defaults, prefix=""):
    """(key, message) for values whose verl default is a number or a bool and that are not one.

    verl's trainer reads keys such as trainer.total_epochs or trainer.nnodes straight from the
    DictConfig (no dataclass checks their type), so `trainer.total_epochs=abc` composes and only
    fails in the driver after Ray has started. A numeric default wants a number, a bool default
    a bool; keys whose default is null, a string or an interpolation take anything.
    """
    if not isinstance(values, dict) or not isinstance(defaults, dict):
        return
    for key, default in defaults.items():
        if key not in values:
            continue
        value, full = values[key], f"{prefix}{key}"
        if isinstance(default, dict):
            yield from _type_problems(value, default, full + ".")
            continue
        if isinstance(default, str) and default.startswith("${"):
            continue  # an interpolation: its type is the type of what it points at
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int | float):
            # verl writes some float settings with integer defaults (rollout.top_p: 1), so any
            # number passes; a string, a list or a bool does not.
            ok, want = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        else:
            continue
        if not ok:
            yield full, f"{value!r} is not {want} (verl's default: {default!r}); fix: -o {full}=<{want}>"


def _positive_int(cfg, key):
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RecipeError(key, f"{value!r} must be a positive integer")
    return value


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a Hugging Face Hub id (org/name) or a remote URL."""
    if "://" in path:
        return False
    return path.startswith(("/", "./", "../", "~")) or path.count("/") != 1 or Path(path).exists()


def check_model_path(path: str, key: str = "actor_rollout_ref.model.path") -> None:
    """A local model folder must exist and hold a config.json (what HFModelConfig loads)."""
    if not _looks_local(path):
        return  # a Hub id: resolved by verl on the cluster (needs the Hub there), not checked here
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RecipeError(key, f"no such model folder: {path}; fix: pass the folder holding config.json and the tokenizer")
    if not (folder / "config.json").is_file():
        raise RecipeError(key, f"{path} has no config.json; fix: pass the Hugging Face model folder itself")


def check_cluster(cfg, use_ref: bool, check_paths: bool = False) -> None:
    """What verl 0.9.1 rejects only after Ray has started, with verl's own rules.

    - world size = trainer.nnodes * trainer.n_gpus_per_node (validate_config's n_gpus);
    - the FSDP engine builds a (dp, sp) device mesh, so the Ulysses size must divide the world
      size (engine/fsdp/transformer_impl.py _init_device_mesh; the actor-level and the
      fsdp_config key are both read);
    - the hybrid rollout builds a (dp, tp * dp_rollout, pp) mesh over the same workers:
      rollout TP x DP x PP must divide the world size (engine_workers.py init_model) and be at
      most it (llm_server.py: world // rollout world replicas);
    - each PPO mini-batch (ppo_mini_batch_size * rollout.n samples) is split evenly over the
      data-parallel ranks, dp = world / Ulysses (engine_workers.py train_mini_batch asserts it);
    - with use_dynamic_bsz a micro-batch holds max_token_len_per_gpu * Ulysses tokens and must
      fit the longest sequence, max_prompt_length + max_response_length
      (utils/seqlen_balancing.py rearrange_micro_batches asserts it), for the update and for the
      log-prob passes;
    - trainer.use_v1=false with dynamic sampling runs another experiment (the v0 trainer has no
      filter_groups); the trainer refuses it too (erc_verl.integration.verl_0_9_1);
    - with check_paths (what `erc-verl check` does on the machine it runs on): a model path the
      user set, other than the placeholder, is an existing local folder with a config.json.
    """
    from omegaconf import OmegaConf

    def get(key, default=None):
        return OmegaConf.select(cfg, key, default=default)

    if not get("trainer.use_v1", True):
        from erc_verl.integration.verl_0_9_1 import v0_trainer_problem

        problem = v0_trainer_problem(cfg)
        if problem:
            raise RecipeError("trainer.use_v1", problem)

    nnodes = _positive_int(cfg, "trainer.nnodes")
    per_node = _positive_int(cfg, "trainer.n_gpus_per_node")
    world = nnodes * per_node
    where = f"the world size trainer.nnodes * trainer.n_gpus_per_node = {nnodes} * {per_node} = {world}"

    roles = [("actor", "actor_rollout_ref.actor")] + ([("ref", "actor_rollout_ref.ref")] if use_ref else [])
    sp = 1
    for role, node in roles:
        for key in (f"{node}.ulysses_sequence_parallel_size", f"{node}.fsdp_config.ulysses_sequence_parallel_size"):
            value = get(key)
            if value is None:
                continue
            if not isinstance(value, int) or value < 1:
                raise RecipeError(key, f"{value!r} must be a positive integer")
            if world % value:
                raise RecipeError(
                    key,
                    f"Ulysses size {value} does not divide {where}; fix: a divisor of {world} "
                    "(set it and the other ulysses_sequence_parallel_size key alike), or more GPUs",
                )
            if role == "actor":
                sp = max(sp, value)

    rollout = "actor_rollout_ref.rollout"
    tp = get(f"{rollout}.tensor_model_parallel_size", 1)
    rdp = get(f"{rollout}.data_parallel_size", 1)
    pp = get(f"{rollout}.pipeline_model_parallel_size", 1)
    replica = tp * rdp * pp
    if replica > world or world % replica:
        raise RecipeError(
            f"{rollout}.tensor_model_parallel_size",
            f"one rollout replica needs TP {tp} x DP {rdp} x PP {pp} = {replica} GPUs, which does not divide {where}; "
            f"fix: a tensor_model_parallel_size that divides {world}",
        )

    model_path = get("actor_rollout_ref.model.path")
    if check_paths and isinstance(model_path, str) and model_path != PLACEHOLDER_MODEL:
        check_model_path(model_path)

    dp = world // sp
    n = get(f"{rollout}.n", 1)
    mini = get("actor_rollout_ref.actor.ppo_mini_batch_size")
    if isinstance(mini, int) and isinstance(n, int) and (mini * n) % dp:
        raise RecipeError(
            "actor_rollout_ref.actor.ppo_mini_batch_size",
            f"a mini-batch of {mini} prompts x rollout.n {n} = {mini * n} responses cannot be split evenly over "
            f"{dp} data-parallel ranks (world {world} / Ulysses {sp}); fix: GPU counts or sizes with "
            f"{mini * n} % (world / Ulysses) == 0",
        )

    longest = (get("data.max_prompt_length") or 0) + (get("data.max_response_length") or 0)
    budgets = [("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu")]
    budgets.append((f"{rollout}.log_prob_use_dynamic_bsz", f"{rollout}.log_prob_max_token_len_per_gpu"))
    if use_ref:
        budgets.append(("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu"))
    for flag, key in budgets:
        budget = get(key)
        if get(flag, False) and isinstance(budget, int) and budget * sp < longest:
            need = -(-longest // sp)
            raise RecipeError(
                key,
                f"{budget} tokens x Ulysses {sp} = {budget * sp} per micro-batch is less than the longest sequence "
                f"(max_prompt_length + max_response_length = {longest}); verl would stop at the first full-length "
                f"response; fix: -o {key}={need} or more",
            )


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
        raise RecipeError(offending_key(exc, "", cfg), _message(exc)) from exc
    for key in missing:
        gate = _UNUSED_MISSING.get(key)
        if gate is not None and not OmegaConf.select(cfg, gate, default=False):
            continue
        raise RecipeError(key, "mandatory value (???) not set")
    # value types, against verl's own defaults (trainer.total_epochs=abc composes fine)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for key, message in _type_problems(resolved, _verl_defaults()):
        raise RecipeError(key, message)

    # 3. the plugin and its loss modes (import erc_verl registers them, as in every verl process)
    import erc_verl
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    loss_key = "actor_rollout_ref.actor.policy_loss.loss_mode"
    mode = OmegaConf.select(cfg, loss_key)
    if mode not in core_algos.POLICY_LOSS_REGISTRY:
        known = ", ".join(sorted(core_algos.POLICY_LOSS_REGISTRY))
        raise RecipeError(loss_key, f"{mode!r} is not a registered policy loss (registered: {known})")

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
        _build(cfg, "actor_rollout_ref.ref")
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
        raise RecipeError(offending_key(exc, "reward.reward_manager", cfg), _message(exc)) from exc

    # 5. what verl rejects later, on the cluster
    check_cluster(cfg, use_ref, check_paths)
    from erc_verl.integration.ulysses_check import ulysses_attention_problem

    problem = ulysses_attention_problem(cfg.actor_rollout_ref)
    if problem is not None:
        raise RecipeError("actor_rollout_ref.model.override_config.attn_implementation", problem)

    # 6. what main_ppo validates before starting Ray
    from verl.utils.config import validate_config

    try:
        # validate_config prints a success line per recipe; keep check's own output readable.
        with contextlib.redirect_stdout(io.StringIO()):
            validate_config(cfg, use_reference_policy=use_ref, use_critic=use_critic)
    except Exception as exc:
        raise RecipeError(offending_key(exc, "", cfg), _message(exc)) from exc

    # 7. the reward function, loaded the way verl loads it, and the DAPO filter metric
    from verl.trainer.ppo.reward import get_custom_reward_fn

    try:
        reward_fn = get_custom_reward_fn(cfg)
    except Exception as exc:
        raise RecipeError("reward.custom_reward_function.path", _message(exc)) from exc
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

    policy_loss = actor.policy_loss
    return {
        "loss_mode": mode,
        "clip": f"{actor.clip_ratio_low}/{actor.clip_ratio_high}/c={actor.clip_ratio_c}",
        "erc_band": f"{getattr(policy_loss, 'entropy_ratio_low', None)}/{getattr(policy_loss, 'entropy_ratio_high', None)}",
        "monitor": getattr(policy_loss, "entropy_ratio_monitor", None),
        "critic": use_critic,
        "ref": use_ref,
    }


def _compose_key(exc: BaseException) -> str:
    """The key a Hydra composition error is about (an override key, a config group), if it says."""
    text = " ".join(str(e) for e in _exception_chain(exc))
    for pattern in (r"Could not override '([^']+)'", r"Key '([^']+)'", r"config group '([^']+)'", r"override (\S+?)="):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return "<compose>"


def check_recipe(config_dir: Path, name: str, overrides=(), model_path: str | None = None) -> dict:
    """Compose one recipe with placeholders and check it; raise RecipeError on failure."""
    try:
        cfg = compose_recipe(config_dir, name, [*PLACEHOLDER_OVERRIDES, *overrides])
    except Exception as exc:
        raise RecipeError(_compose_key(exc), _message(exc)) from exc
    return check_config(cfg, model_path, check_paths=True)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipes", nargs="*", help="recipe names in the recipes folder, or paths to recipe yaml files (default: all)"
    )
    parser.add_argument("--recipes-dir", type=Path, default=None, help="folder of recipes (default: ./recipes)")
    parser.add_argument(
        "--override",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override applied to every recipe (repeatable)",
    )
    parser.add_argument(
        "--model-path",
        default=None,
        help="a local model folder (with config.json): also build HFModelConfig, which loads its tokenizer",
    )


def check_main(args) -> int:
    if args.recipes_dir is not None and not args.recipes_dir.is_dir():
        raise UserError(f"--recipes-dir {args.recipes_dir}: no such folder; fix: the recipes/ folder of an erc-verl checkout")
    recipes_dir = args.recipes_dir or default_recipes_dir()
    names = args.recipes or (list_recipes(recipes_dir) if recipes_dir else [])
    if not names:
        where = f"no *.yaml recipe in {recipes_dir}" if recipes_dir else "no recipes/ folder found"
        raise UserError(f"{where}; fix: pass recipe names or yaml paths, or --recipes-dir DIR")
    if args.model_path:
        try:
            check_model_path(args.model_path, "--model-path")
        except RecipeError as exc:
            raise UserError(exc.message) from exc
    failed = 0
    for arg in names:
        try:
            config_dir, name = resolve_recipe(arg, recipes_dir)
        except FileNotFoundError as exc:
            print(f"FAIL {arg}: {exc}")
            failed += 1
            continue
        try:
            summary = check_recipe(config_dir, name, args.override, args.model_path)
        except RecipeError as exc:
            print(f"FAIL {name}: {exc.key}: {exc.message}")
            failed += 1
            continue
        print(f"OK   {name}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"{len(names) - failed}/{len(names)} recipes OK (composed and built on CPU; not trained)")
    return 1 if failed else 0


main = check_main
add_arguments = add_check_arguments
