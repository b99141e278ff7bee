"""Value types, against verl 0.9.1's own defaults."""

from __future__ import annotations

_VERL_DEFAULTS = None


def verl_defaults():
    """verl 0.9.1's own ppo_trainer config, resolved (the types its code expects), cached."""
    global _VERL_DEFAULTS
    if _VERL_DEFAULTS is None:
        from omegaconf import OmegaConf

        from .compose import compose_verl_trainer

        _VERL_DEFAULTS = OmegaConf.to_container(compose_verl_trainer(), resolve=False)
    return _VERL_DEFAULTS


def type_problems(values, defaults, prefix=""):
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
            yield from type_problems(value, default, full + ".")
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
