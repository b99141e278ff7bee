"""Driver side: two warnings read off the logged metrics of an ERC run (erc_verl.metrics).

- KeepFracFloor: actor/erc_keep_frac under policy_loss.keep_frac_floor for several steps;
- NoPositiveResponses: actor/positive_nll_frac 0 in the first steps of a run with the
  positive-sample NLL term.
verl's trainers log every step's reduced metrics through verl.utils.tracking.Tracking.log, built
with the run's whole config; that is the one place where a step's value is known for the whole
mini-batch, across ranks. The wrappers only read: the data logged is passed on unchanged.
"""

import functools
import logging

from ..settings import select, settings
from .hooks import after_import, wrap

_INSTALLED = "_erc_verl_driver_watch"
KEY = "actor/erc_keep_frac"
POSITIVE_KEY = "actor/positive_nll_frac"
POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"


def watch_from_config(config):
    """A KeepFracFloor for an ERC loss mode's config (dict or DictConfig), else None."""
    from ..metrics import KeepFracFloor

    erc = settings(select(config, POLICY_LOSS))
    floor = erc.tooling.keep_frac_floor
    if not erc.is_erc or floor <= 0:
        return None
    return KeepFracFloor(floor, erc.tooling.keep_frac_floor_steps, *erc.band)


def positive_watch_from_config(config):
    """A NoPositiveResponses for a config with the positive-sample NLL term on, else None."""
    from ..metrics import NoPositiveResponses

    erc = settings(select(config, POLICY_LOSS))
    steps = erc.tooling.positive_nll_warn_steps
    if not erc.positive_nll or steps <= 0:
        return None
    return NoPositiveResponses(steps, erc.algorithm.positive_nll_coeff, *erc.algorithm.positive_rule)


def _make_init(verl_init):
    @functools.wraps(verl_init)
    def __init__(self, *args, **kwargs):
        verl_init(self, *args, **kwargs)
        config = kwargs.get("config", args[3] if len(args) > 3 else None)
        self._erc_verl_watches = (
            {KEY: watch_from_config(config), POSITIVE_KEY: positive_watch_from_config(config)}
            if config is not None
            else {}
        )

    return __init__


def _make_log(verl_log):
    @functools.wraps(verl_log)
    def log(self, data, step, *args, **kwargs):
        if isinstance(data, dict):
            for key, watch in getattr(self, "_erc_verl_watches", {}).items():
                if watch is not None and key in data:
                    message = watch.observe(data[key])
                    if message:
                        logging.getLogger("erc_verl").warning(message)
        return verl_log(self, data, step, *args, **kwargs)

    return log


def _patch_tracking(module) -> None:
    wrap(module.Tracking, "__init__", _make_init, _INSTALLED)
    wrap(module.Tracking, "log", _make_log, _INSTALLED)


def install() -> None:
    after_import("verl.utils.tracking", _patch_tracking)
