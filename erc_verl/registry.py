"""Registration in verl's policy-loss registry, and the choice between patched and runtime feeding.

Every registered function follows verl's policy-loss convention and also takes the keyword
tensors `entropy` and `old_entropy`. Each carries `wants_entropy(policy_loss_config) -> bool`,
which tells the caller (our runtime plumbing, or a verl tree carrying patches/) whether the
update must compute the current entropy for it.
"""

import functools
import inspect
import logging
from typing import Any, Callable

from verl.trainer.ppo import core_algos

from . import losses
from ._compat import tree_is_patched as verl_is_patched
from .config import ERC_LOSS_MODES
from .metrics import entropy_ratio_metrics

logger = logging.getLogger(__name__)


_WRAPPED = "_erc_verl_monitor"


def monitor_enabled(policy_loss_config) -> bool:
    return bool(policy_loss_config is not None and policy_loss_config.get("entropy_ratio_monitor", False))


def _erc_wants_entropy(policy_loss_config) -> bool:
    return True


def with_monitor(fn: Callable) -> Callable:
    """A non-ERC policy loss that also logs the entropy-ratio metrics when the monitor is on.

    The loss and its gradient are exactly `fn`'s: the entropies are only read.
    """
    if getattr(fn, _WRAPPED, False):
        return fn

    @functools.wraps(fn)
    def monitored_policy_loss(*args, entropy=None, old_entropy=None, **kwargs) -> tuple[Any, dict]:
        pg_loss, metrics = fn(*args, **kwargs)
        config = kwargs.get("config")
        policy_loss_config = getattr(config, "policy_loss", None) if config is not None else None
        if monitor_enabled(policy_loss_config):
            log_prob = kwargs.get("log_prob")
            losses.require_entropies("entropy_ratio_monitor", entropy, old_entropy, log_prob)
            low, high = losses.erc_band(config)
            ratio = losses.entropy_ratio(entropy, old_entropy)
            metrics = dict(metrics)
            metrics.update(
                entropy_ratio_metrics(
                    ratio, kwargs["response_mask"], low, high, **losses._global_batch_info(config)
                )
            )
        return pg_loss, metrics

    # functools.wraps makes inspect.signature report fn's parameters; callers that decide from
    # the signature whether to pass the entropies (patched verl, the plumbing) must see them.
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in ("entropy", "old_entropy")]
    monitored_policy_loss.__signature__ = inspect.Signature(params)
    setattr(monitored_policy_loss, _WRAPPED, True)
    monitored_policy_loss.wants_entropy = monitor_enabled
    return monitored_policy_loss


def _register(name: str, fn: Callable) -> None:
    core_algos.POLICY_LOSS_REGISTRY[name] = fn


def loss_wants_entropy(policy_loss_config) -> bool:
    """Whether the configured policy loss needs the current and old entropies in the update."""
    if policy_loss_config is None:
        return False
    mode = policy_loss_config.get("loss_mode", "vanilla")
    fn = core_algos.POLICY_LOSS_REGISTRY.get(mode)
    if fn is None:
        return False
    if not hasattr(fn, "wants_entropy"):
        # Registered after erc_verl was imported (another plugin): give it the monitor too.
        fn = with_monitor(fn)
        _register(mode, fn)
    return bool(fn.wants_entropy(policy_loss_config))


def install() -> str:
    """Register the loss modes; feed them at runtime unless verl is patched. Idempotent.

    Returns "patched" or "runtime": which of the two ways feeds the entropies.
    """
    for name, fn in list(core_algos.POLICY_LOSS_REGISTRY.items()):
        if name not in ERC_LOSS_MODES:
            _register(name, with_monitor(fn))
    for name, fn in (
        ("dapo_erc", losses.compute_policy_loss_dapo_erc),
        ("gppo_erc", losses.compute_policy_loss_gppo_erc),
    ):
        fn.wants_entropy = _erc_wants_entropy
        _register(name, fn)
    _register("gppo", with_monitor(losses.compute_policy_loss_gppo))

    if verl_is_patched():
        return "patched"
    from . import plumbing

    plumbing.install()
    return "runtime"
