"""Which config keys exist, from the composed config and the config classes behind it.

A key is valid when the composed recipe holds it, or when the dataclass its node is built into
(the node's `_target_`, e.g. erc_verl.ERCPolicyLossConfig or verl's ActorConfig) has a field of
that name. A misspelt key is answered with the closest valid keys (difflib), never with Hydra's
advice to add it with `+`: a key the config class does not have fails when the class is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from .errors import RecipeError

# Override keys that are not config keys of the run (Hydra's own settings, config groups).
_NOT_RUN_KEYS = ("hydra.",)


def target_class(node):
    """The dataclass a config node is built into (its `_target_`), else None."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_dict(node):
        return None
    target = node.get("_target_") if "_target_" in node else None
    if not isinstance(target, str):
        return None
    from hydra._internal.utils import _locate

    try:
        cls = _locate(target)
    except Exception:
        return None
    return cls if dataclasses.is_dataclass(cls) else None


def class_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} | {"_target_"}


def node_at(cfg, key: str):
    from omegaconf import OmegaConf

    if not key:
        return cfg
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:
        return None


def config_keys(cfg, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config, plus the fields of each node's config class."""
    from omegaconf import OmegaConf

    out = []
    if not OmegaConf.is_dict(cfg):
        return out
    names = set(cfg.keys())
    cls = target_class(cfg)
    if cls is not None:
        names |= class_fields(cls)
    for name in sorted(map(str, names)):
        full = f"{prefix}{name}"
        out.append(full)
        child = cfg._get_node(name) if name in cfg else None
        if child is not None and OmegaConf.is_dict(child):
            out += config_keys(child, full + ".")
    return out


def closest(key: str, valid) -> list[str]:
    """Up to three valid keys nearest to `key`: siblings (same parent) first, then anywhere."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in valid if k.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(key, siblings, n=3, cutoff=0.6)
    if not near:
        near = difflib.get_close_matches(key, valid, n=3, cutoff=0.75)
    if not near:  # the leaf alone, in any node (a key put under the wrong parent)
        by_leaf = {}
        for k in valid:
            by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
        for name in difflib.get_close_matches(leaf, list(by_leaf), n=2, cutoff=0.8):
            near += by_leaf[name][:2]
    return near[:3]


def unknown_key_error(key: str, valid, value=None, where: str = "") -> RecipeError:
    near = closest(key, valid)
    shown = "<value>" if value is None else value
    if near:
        others = f" (or {', '.join(near[1:])})" if len(near) > 1 else ""
        fix = f"did you mean {near[0]}{others}? fix: -o {near[0]}={shown}"
    else:
        fix = "fix: a key of the recipe's config (see the recipe yaml and verl's ppo_trainer config)"
    return RecipeError(key, f"no such config key{where}; {fix}")


def check_override_keys(base_cfg, overrides) -> None:
    """Every override names a key that exists, before Hydra composes it.

    `key=value` must name an existing key; `+key=value` / `++key=value` must name a field of the
    parent node's config class when that node is built into one (a free-form node such as
    ray_kwargs.ray_init.runtime_env.env_vars takes any key). `~key` and group overrides pass.
    """
    from hydra.core.override_parser.types import OverrideType

    from .compose import parse_overrides

    valid = None
    for override in parse_overrides(overrides):
        key = override.key_or_group
        if override.package is not None or key.startswith(_NOT_RUN_KEYS) or override.type == OverrideType.DEL:
            continue
        value = override.get_value_element_as_str() if override.value() is not None else None
        if override.type == OverrideType.CHANGE:
            if node_at(base_cfg, key) is not None or _leaf_exists(base_cfg, key):
                continue
            if valid is None:
                valid = config_keys(base_cfg)
            if key in valid:
                continue
            if "." not in key and _is_group(key):
                continue
            raise unknown_key_error(key, valid, value)
        parent, _, leaf = key.rpartition(".")
        cls = target_class(node_at(base_cfg, parent))
        if cls is not None and leaf not in class_fields(cls):
            if valid is None:
                valid = config_keys(base_cfg)
            raise unknown_key_error(key, valid, value, f" ({cls.__name__} has no field {leaf!r})")


def _leaf_exists(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = node_at(cfg, parent)
    return node is not None and OmegaConf.is_dict(node) and leaf in node


def _is_group(name: str) -> bool:
    """A top-level config group of verl's ppo_trainer (e.g. `actor@...` is handled by package)."""
    from importlib.resources import files

    try:
        return (files("verl.trainer.config") / name).is_dir()
    except Exception:
        return False


def check_node_fields(cfg, path: str) -> None:
    """Each key under `path` is a field of the config class it is built into (recursively)."""
    from omegaconf import OmegaConf

    node = node_at(cfg, path)
    if not OmegaConf.is_dict(node):
        return
    cls = target_class(node)
    if cls is not None:
        fields = class_fields(cls)
        for name in node.keys():
            if name not in fields:
                full = f"{path}.{name}" if path else str(name)
                raise unknown_key_error(full, config_keys(cfg), None, f" ({cls.__name__} has no field {name!r})")
    for name in node.keys():
        child = node._get_node(name)
        if OmegaConf.is_dict(child):
            check_node_fields(cfg, f"{path}.{name}" if path else str(name))


def field_named_in(message: str, cfg, path: str) -> str:
    """The key under `path` that a validation message is about.

    The candidates are the fields of the node's config classes (not words guessed from the
    text): the field whose name appears in the message as a whole word, most specific first.
    """
    from omegaconf import OmegaConf

    node = node_at(cfg, path)
    found = []

    def visit(n, prefix):
        if not OmegaConf.is_dict(n):
            return
        names = set(map(str, n.keys()))
        cls = target_class(n)
        if cls is not None:
            names |= class_fields(cls) - {"_target_"}
        for name in names:
            if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", message):
                found.append(f"{prefix}.{name}" if prefix else name)
            child = n._get_node(name) if name in n else None
            if child is not None and OmegaConf.is_dict(child):
                visit(child, f"{prefix}.{name}" if prefix else name)

    visit(node, path)
    if not found:
        return path or "<config>"
    # The field nearest the message's own dotted name wins (e.g. policy_loss.entropy_ratio_low).
    return max(found, key=lambda k: (sum(part in message for part in k.split(".")), len(k)))
