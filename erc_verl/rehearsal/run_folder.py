"""Smoke run folders: one new folder per run, a `latest` link, a status marker, verl's file log.

Layout (nothing in it is ever removed by the smoke):

    runs/smoke/RECIPE/<YYYYmmdd-HHMMSS>/      one run (or exactly DIR with `--out DIR`)
        erc_verl_smoke_run.json               marker: recipe, model, status, launches
        layout.json                           the layout the run rehearsed, read from Ray
        logs/metrics-<time>.jsonl             verl's file logger, one file per launch
        logs/console-<time>.log               the driver's console output, one file per launch
        global_step_N/                        verl's checkpoints (trainer.default_local_dir)
    runs/smoke/RECIPE/latest -> <time>        the newest run that trained at least one step

The marker's `status` is "running", "done", "failed" or "interrupted"; `erc-verl table` skips a
run marked failed or interrupted that never trained a step, and says so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MARKER = "erc_verl_smoke_run.json"
LATEST = "latest"


def read_file_log(path: Path) -> dict[int, dict]:
    """verl's file-logger JSONL as {step: metrics}; a step logged twice is merged."""
    steps: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps.setdefault(int(row["step"]), {}).update(row.get("data", {}))
    return steps


def trained_steps(path: Path) -> list[int]:
    """Training steps (those with an actor update) in one file log; [] when it is missing or unreadable."""
    try:
        steps = read_file_log(path)
    except (OSError, ValueError, KeyError):
        return []
    return sorted(s for s, m in steps.items() if any(k.startswith("timing_s/update_actor") for k in m))


def read_marker(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(run_dir: Path, marker: dict) -> None:
    path = Path(run_dir) / MARKER
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, path)  # never a half-written marker


def is_run_folder(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def new_run_dir(recipe_dir: Path, stamp: str | None = None) -> Path:
    """A new, empty <recipe_dir>/<time> folder (a suffix when two runs start in the same second)."""
    recipe_dir = Path(recipe_dir)
    recipe_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = recipe_dir / (stamp if i == 0 else f"{stamp}-{i + 1}")
        try:
            path.mkdir()  # atomic: the folder is this run's alone
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder name under {recipe_dir}")


def point_latest(run_dir: Path) -> Path | None:
    """Make <parent>/latest a symlink to run_dir; None (and nothing touched) when latest is not a link."""
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        return None  # a file or folder of someone else's: leave it alone
    tmp = link.with_name(f".{LATEST}.tmp{os.getpid()}")
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)
    return link


def start_launch(run_dir: Path, recipe: str, model: Path, stamp: str, argv: list[str]) -> dict:
    """Record a launch in the marker (a new run, or a continued one) and mark the run running."""
    marker = read_marker(run_dir) or {"recipe": recipe, "model": str(model), "launches": []}
    marker.setdefault("launches", []).append({"started": stamp, "argv": argv, "status": "running"})
    marker["status"] = "running"
    write_marker(run_dir, marker)
    return marker


def finish_launch(run_dir: Path, marker: dict, status: str, rc: int | None, steps: list[int]) -> dict:
    """Close the last launch: its status, exit code and the training steps its file log holds."""
    launch = marker["launches"][-1]
    launch.update(status=status, rc=rc, trained_steps=steps)
    marker["status"] = status
    marker["trained_steps"] = sorted({s for la in marker["launches"] for s in la.get("trained_steps", [])})
    write_marker(run_dir, marker)
    return marker
