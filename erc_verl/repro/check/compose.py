"""Find recipes and compose them with Hydra, as `main_ppo --config-path DIR --config-name NAME` does."""

from __future__ import annotations

import os
from pathlib import Path

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


def default_recipes_dir() -> Path | None:
    """recipes/ of the source checkout this package runs from, else ./recipes."""
    env = os.environ.get("ERC_VERL_RECIPES")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "recipes", Path.cwd() / "recipes"]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def list_recipes(recipes_dir: Path) -> list[str]:
    """Top-level recipes (the shared pieces live in sub-folders)."""
    return sorted(p.name[: -len(".yaml")] for p in recipes_dir.glob("*.yaml"))


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


def compose_recipe(config_dir: Path, name: str, overrides=()):
    """The recipe composed by Hydra exactly as `main_ppo --config-path DIR --config-name NAME` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def compose_verl_trainer(overrides=()):
    """verl's own ppo_trainer config, composed as a plain verl command line starts from it."""
    import verl

    return compose_recipe(Path(verl.__file__).parent / "trainer" / "config", "ppo_trainer", overrides)


def parse_overrides(overrides) -> list:
    """Hydra's own parse of KEY=VALUE overrides (what `compose` would do with them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))
