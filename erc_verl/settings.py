"""ERC's settings: each declared, documented, defaulted and validated here, once.

`settings(policy_loss)` reads them from any verl policy-loss config (the DictConfig in the
driver, `erc-verl check` and the launch preflight; the `ERCPolicyLossConfig` verl builds in each
worker; a dict) into one frozen `ERCSettings`, validated when it is built and cached, so every
place refuses the same things with the same words. Every module that needs a setting asks it.
`select(cfg, "a.b.c")` is the one way erc_verl reads any other key of a verl config.

Two groups, kept apart: `Algorithm` (what ERC computes: the band, the base loss, the
positive-sample NLL term) and `Tooling` (what erc_verl logs, warns about and accepts; none of
it changes a gradient). The fields are verl's `policy_loss` keys, flat, as Hydra and verl want
them (`actor_rollout_ref.actor.policy_loss.entropy_ratio_low=...`).

No verl import here: the driver, the check and the plugin's load read settings cheaply.
"""

import math
from dataclasses import dataclass, field, fields

from .modes import ERC_LOSS_MODES, SEQUENCE_LEVEL_MODES, TOKEN_LOCAL_MODES

# The band a config may set: each bound within a factor 2 of 1. The paper's band is 0.95 / 1.05
# (written as epsilon 0.05); a bound outside this range is almost surely an epsilon typed into a
# bound's field (entropy_ratio_low=0.05 keeps every token whose entropy fell by up to 95%), or
# a band so wide (the entropy may halve or double) that the gate no longer constrains anything.
BAND_LOW_RANGE = (0.5, 1.0)  # [0.5, 1)
BAND_HIGH_RANGE = (1.0, 2.0)  # (1, 2]
POSITIVE_NLL_NORMS = ("micro", "global")
POSITIVE_NLL_COMPARES = ("eq", "ge")


@dataclass(frozen=True)
class Algorithm:
    """What ERC computes. Every field changes the objective or its gradient."""

    # verl's own field (PolicyLossConfig.loss_mode), read here so every module asks one object.
    loss_mode: str = "vanilla"
    # Lower bound of the entropy-ratio band: a response token keeps its gradient only when
    # entropy_ratio_low < H_cur / H_old < entropy_ratio_high (strict). A bound, not an epsilon.
    # Paper: 0.95. Refused outside [0.5, 1) (band_problem).
    entropy_ratio_low: float = 0.95
    # Upper bound of the entropy-ratio band. Paper: 1.05. Refused outside (1, 2].
    entropy_ratio_high: float = 1.05
    # CE-GPPO (arXiv 2509.20712) weight on the gradient of tokens clipped below 1 - clip_ratio_low
    # with negative advantage. 1.0 is GPPO (arXiv 2508.07629), 0.0 is plain PPO-clip.
    gppo_beta_low: float = 1.0
    # CE-GPPO weight on the gradient of tokens clipped above 1 + clip_ratio_high with positive
    # advantage. 1.0 is GPPO, 0.0 is plain PPO-clip.
    gppo_beta_high: float = 1.0
    # Weight of the authors' positive-sample NLL term (erc_verl.losses.positive_nll_loss), added to
    # every loss mode and never gated by ERC. 0.0 is the paper text's objective; the authors' runs
    # used 0.1 (docs/algorithm.md, "Positive-sample NLL term", cites where).
    positive_nll_coeff: float = 0.0
    # "micro" (the authors'): the term is normalised by each micro-batch's positive tokens, so the
    # micro-batching changes the objective; "global": by the whole mini-batch's over all ranks
    # (stock verl 0.9.1's FSDP engine only; a patched tree refuses it).
    positive_nll_norm: str = "micro"
    # Which responses count as positive for that term: the summed reward before any KL penalty,
    # compared with positive_nll_reward by positive_nll_compare. "eq" with 1.0 is the authors' test
    # (sum == 1.0); "ge" counts sum >= positive_nll_reward (a format bonus, an overlong penalty).
    positive_nll_reward: float = 1.0
    positive_nll_compare: str = "eq"
    # loss_mode=erc only: the registered loss mode whose gradient ERC gates (dapo_erc is erc over
    # vanilla, gppo_erc over gppo). Must be token-local (erc_verl.modes.TOKEN_LOCAL_MODES) or listed
    # in erc_token_local_modes.
    erc_base_loss_mode: str = "vanilla"
    # Your own registered loss modes that you declare token-local: the loss of token t depends on
    # the parameters only through log_prob[t]. ERC refuses any other unknown mode.
    erc_token_local_modes: tuple = ()

    @property
    def positive_rule(self) -> tuple[float, str]:
        """(positive_nll_reward, positive_nll_compare): which responses the NLL term counts."""
        return self.positive_nll_reward, self.positive_nll_compare

    def __post_init__(self):
        _require_text(self, "loss_mode", "erc_base_loss_mode")
        _require_numbers(self, "entropy_ratio_low", "entropy_ratio_high", "gppo_beta_low", "gppo_beta_high")
        _require_numbers(self, "positive_nll_coeff", "positive_nll_reward")
        problem = band_problem(self.entropy_ratio_low, self.entropy_ratio_high)
        if problem:
            raise ValueError(problem)
        for name in ("gppo_beta_low", "gppo_beta_high"):
            if getattr(self, name) < 0:
                raise ValueError(f"policy_loss.{name} must be >= 0 (1.0 is GPPO), got {getattr(self, name)}")
        if self.positive_nll_coeff < 0:
            raise ValueError(
                f"policy_loss.positive_nll_coeff must be >= 0 (0 = the paper text's objective, 0.1 = the "
                f"authors' runs), got {self.positive_nll_coeff}"
            )
        _require_choice(self, "positive_nll_norm", POSITIVE_NLL_NORMS, "micro = the authors'")
        _require_choice(self, "positive_nll_compare", POSITIVE_NLL_COMPARES, "eq = the authors' sum == reward")
        if not all(isinstance(mode, str) for mode in self.erc_token_local_modes):
            raise ValueError(
                f"policy_loss.erc_token_local_modes must be a list of loss-mode names, got {self.erc_token_local_modes!r}"
            )
        problem = erc_base_problem(self.erc_base_loss_mode, self.erc_token_local_modes)
        if problem:
            raise ValueError(problem)


@dataclass(frozen=True)
class Tooling:
    """What erc_verl logs, checks and warns about. No field changes a gradient."""

    # Log the entropy-ratio metrics (actor/erc_keep_frac, actor/entropy_ratio_mean, ...) for any
    # loss mode, e.g. a `vanilla` or `gppo` baseline. Never changes a gradient. ERC modes always log.
    entropy_ratio_monitor: bool = False
    # One warning when the positive-sample NLL term is on and no response of the first
    # positive_nll_warn_steps logged steps counted as positive (the term added nothing); 0 disables.
    positive_nll_warn_steps: int = 3
    # use_fused_kernels=true gives verl's fused entropy only (measured relative error up to 1.0 below
    # H = 1e-4); ERC refuses it unless this names that error: set 1.0 to accept it.
    fused_entropy_accepted_rel_error: float = 0.0
    # One warning when actor/erc_keep_frac stays below this for keep_frac_floor_steps updates in a
    # row (0 disables). A heuristic: the paper's runs keep about 80%; docs/algorithm.md,
    # "Keep-fraction floor", gives the CPU study's reasons for 0.6.
    keep_frac_floor: float = 0.6
    keep_frac_floor_steps: int = 5

    def __post_init__(self):
        if not isinstance(self.entropy_ratio_monitor, bool):
            raise ValueError(
                f"policy_loss.entropy_ratio_monitor must be true or false, got {self.entropy_ratio_monitor!r}"
            )
        _require_numbers(self, "fused_entropy_accepted_rel_error", "keep_frac_floor")
        _require_count(self, "positive_nll_warn_steps", minimum=0)
        _require_count(self, "keep_frac_floor_steps", minimum=1)
        if not 0.0 <= self.keep_frac_floor < 1.0:
            raise ValueError(f"policy_loss.keep_frac_floor must lie in [0, 1) (0 disables), got {self.keep_frac_floor}")


@dataclass(frozen=True)
class ERCSettings:
    """Every ERC setting of one policy-loss config, validated; the answers the plumbing needs."""

    algorithm: Algorithm = field(default_factory=Algorithm)
    tooling: Tooling = field(default_factory=Tooling)
    # Whether the config carried ERC's fields (an ERCPolicyLossConfig, or the shipped snippet);
    # an ERC loss mode refuses a plain PolicyLossConfig instead of assuming the paper's band.
    declared: bool = False

    @property
    def is_erc(self) -> bool:
        """An ERC loss mode: the gradient is gated."""
        return self.algorithm.loss_mode in ERC_LOSS_MODES

    @property
    def monitor(self) -> bool:
        """entropy_ratio_monitor on a non-ERC mode: the ratio metrics, no gradient changed."""
        return self.tooling.entropy_ratio_monitor and not self.is_erc

    @property
    def wants_entropy(self) -> bool:
        """The update needs H_cur and the old-log-prob pass H_old."""
        return self.is_erc or self.monitor

    @property
    def positive_nll(self) -> bool:
        return self.algorithm.positive_nll_coeff > 0

    @property
    def active(self) -> bool:
        """erc_verl changes or watches this run: an ERC mode, the monitor, or the NLL term."""
        return self.wants_entropy or self.positive_nll

    @property
    def band(self) -> tuple[float, float]:
        return self.algorithm.entropy_ratio_low, self.algorithm.entropy_ratio_high


GROUPS = (Algorithm, Tooling)
# The policy_loss keys ERC adds to verl's (loss_mode is verl's own), with their defaults.
ERC_FIELDS = tuple(f for group in GROUPS for f in fields(group) if f.name != "loss_mode")
DEFAULTS = {f.name: f.default for group in GROUPS for f in fields(group)}

_MISSING = object()
_BUILT_ATTR = "_erc_settings"
_CACHE: dict = {}


def settings(policy_loss) -> ERCSettings:
    """The validated ERCSettings of a policy-loss config (None: a run without one, all defaults).

    Built once per config: an ERCPolicyLossConfig keeps the object it built when verl made it; any
    other config (a DictConfig, a dict) is cached by its values. Raises ValueError, one line.
    """
    built = getattr(policy_loss, "__dict__", {}).get(_BUILT_ATTR) if policy_loss is not None else None
    if built is not None:
        return built
    raw = {name: _read(policy_loss, name) for name in DEFAULTS}
    declared = raw["entropy_ratio_low"] is not _MISSING
    values = {k: (DEFAULTS[k] if v is _MISSING or v is None else v) for k, v in raw.items()}
    values["erc_token_local_modes"] = tuple(values["erc_token_local_modes"] or ())
    key = (declared, *((k, repr(v)) for k, v in sorted(values.items())))
    if key not in _CACHE:
        groups = [group(**{f.name: values[f.name] for f in fields(group)}) for group in GROUPS]
        _CACHE[key] = ERCSettings(*groups, declared=declared)
    return _CACHE[key]


def keep_built(policy_loss) -> ERCSettings:
    """Build and keep the settings on the config object itself (ERCPolicyLossConfig.__post_init__)."""
    built = settings(policy_loss)
    object.__setattr__(policy_loss, _BUILT_ATTR, built)
    return built


def _read(node, name: str):
    if node is None:
        return _MISSING
    try:
        value = node.get(name, _MISSING) if hasattr(node, "get") else getattr(node, name, _MISSING)
    except Exception:  # a structured config refusing an unknown key
        return _MISSING
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return tuple(value)
    return value


def select(cfg, dotted: str, default=None):
    """cfg.a.b.c of a DictConfig, dict or verl dataclass config; default where any level is missing."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        node = _read(node, part)
        if node is _MISSING:
            return default
    return default if node is None else node


# `${erc_verl.default:NAME}` in a Hydra config: NAME's default above. The shipped snippet
# (erc_verl/conf/policy_loss/erc.yaml) lists every field so, and each default stays written once.
RESOLVER = "erc_verl.default"


def register_resolver(omegaconf) -> None:
    """Register RESOLVER with OmegaConf (the plugin does it in every process, once omegaconf loads)."""
    if not omegaconf.OmegaConf.has_resolver(RESOLVER):
        omegaconf.OmegaConf.register_new_resolver(RESOLVER, _default_of)


def _default_of(name: str):
    if name not in DEFAULTS:
        raise KeyError(f"${{{RESOLVER}:{name}}}: no ERC setting {name!r} (settings: {', '.join(sorted(DEFAULTS))})")
    value = DEFAULTS[name]
    return list(value) if isinstance(value, tuple) else value


def band_problem(low, high) -> str | None:
    """The one line refusing an entropy-ratio band outside the plausible range, or None."""
    if not BAND_LOW_RANGE[0] <= low < BAND_LOW_RANGE[1]:
        field_name, value, allowed, paper = "entropy_ratio_low", low, "[0.5, 1)", 0.95
    elif not BAND_HIGH_RANGE[0] < high <= BAND_HIGH_RANGE[1]:
        field_name, value, allowed, paper = "entropy_ratio_high", high, "(1, 2]", 1.05
    else:
        return None
    return (
        f"policy_loss.{field_name}={value} is outside {allowed}: the two band fields are bounds on "
        "H_cur / H_old, not an epsilon (the paper's band: low 0.95, high 1.05, i.e. epsilon 0.05); "
        f"fix: actor_rollout_ref.actor.policy_loss.{field_name}={paper}"
    )


def erc_base_problem(base_mode: str, declared=()) -> str | None:
    """Why loss_mode=erc cannot gate `base_mode` (one line), or None."""
    if base_mode in SEQUENCE_LEVEL_MODES:
        return (
            f"policy_loss.erc_base_loss_mode={base_mode!r} cannot be gated by ERC: {SEQUENCE_LEVEL_MODES[base_mode]}. "
            f"Fix: pick a token-local base ({', '.join(TOKEN_LOCAL_MODES)})."
        )
    if base_mode in ERC_LOSS_MODES:
        return f"policy_loss.erc_base_loss_mode={base_mode!r} is already gated. Fix: name its base (vanilla, gppo)."
    if base_mode in TOKEN_LOCAL_MODES or base_mode in tuple(declared or ()):
        return None
    return (
        f"policy_loss.erc_base_loss_mode={base_mode!r} is not known to be token-local, so ERC's gate may not "
        "stop its gradient exactly. Fix: if its loss of token t depends on the parameters only through "
        f"log_prob[t], add it to policy_loss.erc_token_local_modes=[{base_mode}]."
    )


def _require_numbers(obj, *names) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"policy_loss.{name} must be a finite number, got {value!r}")


def _require_count(obj, name: str, minimum: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"policy_loss.{name} must be an integer >= {minimum}, got {value!r}")


def _require_text(obj, *names) -> None:
    for name in names:
        if not isinstance(getattr(obj, name), str):
            raise ValueError(f"policy_loss.{name} must be a loss-mode name, got {getattr(obj, name)!r}")


def _require_choice(obj, name: str, choices, why: str) -> None:
    if getattr(obj, name) not in choices:
        raise ValueError(f"policy_loss.{name} must be one of {', '.join(choices)} ({why}), got {getattr(obj, name)!r}")
