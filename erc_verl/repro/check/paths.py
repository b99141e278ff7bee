"""Paths a user supplies: the model folder and the data files, named by where they came from."""

from __future__ import annotations

from pathlib import Path

from .errors import RecipeError


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
        raise RecipeError(
            key, f"no such model folder: {path}; fix: pass the folder holding config.json and the tokenizer"
        )
    if not (folder / "config.json").is_file():
        raise RecipeError(key, f"{path} has no config.json; fix: pass the Hugging Face model folder itself")


def _is_remote(path: str) -> bool:
    return "://" in path


def check_data_files(value: str, name: str) -> None:
    """Each comma-separated local file of TRAIN_FILES / VAL_FILES exists (remote URLs pass)."""
    items = [p.strip() for p in value.strip("[]").split(",") if p.strip()]
    if not items:
        raise RecipeError(name, f"{name} is empty; fix: {name}=/shared/data/FILE.parquet[,...]")
    for item in items:
        item = item.strip("'\"")
        if _is_remote(item):
            continue
        if not Path(item).expanduser().is_file():
            raise RecipeError(
                name,
                f"no such file: {item} (from {name}); fix: {name}= parquet file(s) every node can read, "
                "written by scripts/erc-verl prepare-data --out DIR",
            )
