"""A recipe through verl's own trainer (`python -m verl.trainer.main_ppo`) on CPU, in minutes.

`scripts/launch.sh --smoke RECIPE [hydra overrides]` calls `main()` here. The recipe is composed
as it is; `overrides.smoke_overrides()` lists the only things changed, each with its reason,
and the command prints them. The other modules of erc_verl/rehearsal/ do the pieces
(docs/architecture.md lists them).

Every run writes a new folder runs/smoke/RECIPE/<time>/ (`latest` points at the newest that
trained a step), or exactly DIR with `--out DIR`. `--out DIR` or `--resume DIR` of an existing
run continues it from its last checkpoint (verl's trainer.resume_mode=auto). Nothing is removed.

Python API (the demo reuses it): `prepare_assets()`, `build_smoke()` -> `SmokePlan`,
`run_main_ppo(plan)`, `read_file_log(path)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import layout_probe
from .leftovers import ShmLedger
from .overrides import (
    CPU_PLUGINS,
    DEFAULT_ROLLOUT,
    POLL_S,
    RAY_CPUS_PER_NODE,
    ROLLOUTS,
    RUNTIME_ENV,
    Layout,
    pick_ulysses,
    private_files_env,
    smoke_overrides,
)
from .ray_cluster import AUTH_ENV, LocalRayCluster, private_temp_dir
from .run_folder import (
    MARKER,
    finish_launch,
    is_run_folder,
    new_run_dir,
    point_latest,
    read_file_log,
    read_marker,
    start_launch,
    trained_steps,
    write_marker,
)
from .runner import ROOT, run_main_ppo
from .tiny_model import ModelSpec, asset_paths, build_model, build_tokenizer, prepare_assets, prompt_ids
from .trainer_mode import TrainerMode, TrainerModeError, composed, read_trainer_mode
from .watchdog import FailureWatch

__all__ = [
    "ROOT",
    "ModelSpec",
    "SmokePlan",
    "build_model",
    "build_smoke",
    "build_tokenizer",
    "main",
    "prepare_assets",
    "prompt_ids",
    "read_file_log",
    "run_main_ppo",
    "smoke_overrides",
]

RECIPES_DIR = ROOT / "recipes"
DEFAULT_OUT = Path("runs") / "smoke"
_SHOWN_ENV = ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES", "VERL_FILE_LOGGER_PATH")


@dataclass
class SmokePlan:
    recipe: str
    run_dir: Path
    file_log: Path
    cmd: list[str]
    env: dict[str, str]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    layout: Layout = field(default_factory=Layout)
    trainer_mode: TrainerMode = field(default_factory=TrainerMode)
    console_log: Path | None = None
    probe_file: Path | None = None
    ray_temp_dir: Path | None = None
    ledger: Path | None = None

    def describe(self) -> str:
        lines = [
            f"# smoke run of recipes/{self.recipe}.yaml through verl's main_ppo on CPU",
            f"# run folder: {self.run_dir} (metrics: {self.file_log})",
        ]
        if self.console_log is not None:
            lines.append(f"# console log: {self.console_log}")
        lines += self.layout.describe()
        lines += self.trainer_mode.describe()
        lines.append("# overrides (everything else is the recipe's):")
        width = min(64, max((len(o) for o, _ in self.overrides), default=0))
        for o, why in self.overrides:
            lines.append(f"#   {o.ljust(width)}  # {why}" if len(o) <= width else f"#   {o}\n#   {'':{width}}  # {why}")
        if self.extra:
            lines.append("# your overrides (applied last):")
            lines += [f"#   {o}" for o in self.extra]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if k in _SHOWN_ENV)
        lines.append(f"{env} \\\n  " + " ".join(shlex.quote(c) for c in self.cmd))
        return "\n".join(lines)


def _recipe_name(recipe: str, recipes_dir: Path) -> str:
    """The recipe's name without `.yaml`; FileNotFoundError naming the recipes when there is no such one."""
    recipe = recipe[:-5] if recipe.endswith(".yaml") else recipe
    if not (recipes_dir / f"{recipe}.yaml").exists():
        names = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {recipe!r} in {recipes_dir} (available: {' '.join(names)})")
    return recipe


def build_smoke(
    recipe: str,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    extra_overrides: list[str] | tuple[str, ...] = (),
    *,
    steps: int = 3,
    spec: ModelSpec = ModelSpec(),
    python: str | None = None,
    recipes_dir: str | os.PathLike = RECIPES_DIR,
    run_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    layout: Layout = Layout(),
    ray_address: str | None = None,
    ray_temp_dir: Path | None = None,
    probe: bool = False,
    worker_slots: bool = False,
    prepare: bool = True,
    stamp: str | None = None,
    private_dir: Path | None = None,
    log=print,
    trainer_mode: TrainerMode | None = None,
) -> SmokePlan:
    """The main_ppo command and environment of one smoke run.

    run_dir: the run folder (default OUT_DIR/RECIPE); cache_dir: the model/data cache (default
    OUT_DIR/.cache). prepare=False builds nothing and writes nothing (a dry run). Nothing that
    is already in the run folder is removed: verl continues from its last checkpoint there.
    private_dir: the run's private temp dir (the Ray temp dir); with it, the run's temp files,
    sockets and caches go there, and its processes carry the /dev/shm ledger's mark.
    """
    recipes_dir = Path(recipes_dir).resolve()
    recipe = _recipe_name(recipe, recipes_dir)
    out_dir = Path(out_dir).resolve()
    run_dir = Path(run_dir).resolve() if run_dir is not None else out_dir / recipe
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else out_dir / ".cache"
    if prepare:
        # Looked up on the module, so a caller (or a test) can replace it.
        model_dir, data = sys.modules[__name__].prepare_assets(cache_dir, spec, log=log)
    else:
        model_dir, data = asset_paths(cache_dir, spec)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    file_log = run_dir / "logs" / f"metrics-{stamp}.jsonl"
    probe_file = run_dir / "logs" / f"layout-probe-{stamp}.ndjson" if probe else None
    ledger = run_dir / "logs" / f"shm-{stamp}.txt" if private_dir is not None else None
    private_env = private_files_env(private_dir, ledger) if private_dir is not None else {}
    if prepare:
        file_log.parent.mkdir(parents=True, exist_ok=True)
        if read_marker(run_dir) is None:
            # Tells `erc-verl table` this is a tiny CPU model, not the recipe's model (no paper column).
            write_marker(run_dir, {"recipe": recipe, "model": str(model_dir), "launches": []})
    overrides = smoke_overrides(
        model_dir,
        data,
        run_dir,
        file_log,
        steps=steps,
        layout=layout,
        ray_address=ray_address,
        ray_temp_dir=ray_temp_dir,
        private_env=private_env,
    )
    # The trainer mode's own sizes replace the smoke's (the batch size, for separate_async).
    trainer_mode = trainer_mode or TrainerMode()
    replaced = {o.split("=", 1)[0] for o, _ in trainer_mode.overrides()}
    overrides = [p for p in overrides if p[0].split("=", 1)[0] not in replaced] + trainer_mode.overrides()
    if probe_file is not None:
        modules = ",".join((*CPU_PLUGINS, layout_probe.MODULE))
        overrides += [
            (
                f"++{RUNTIME_ENV}.VERL_USE_EXTERNAL_MODULES='{modules}'",
                "erc_verl, its CPU runtime, and the layout probe (layout.json)",
            ),
            (f"++{RUNTIME_ENV}.{layout_probe.ENV}={probe_file}", "each training rank records its Ray node there"),
        ]
    if worker_slots:
        overrides.append(
            (
                f"++{RUNTIME_ENV}.{layout_probe.SLOT_ENV}={layout_probe.SLOT_RESOURCE}",
                "one worker slot per bundle: each node's workers on a Ray node of their own, as GPUs do",
            )
        )
    cmd = [
        python or sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "--config-path",
        str(recipes_dir),
        "--config-name",
        recipe,
        *[o for o, _ in overrides],
        *extra_overrides,
    ]
    env = dict(os.environ)
    external = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    external += [m for m in CPU_PLUGINS if m not in external]
    env.update(
        VERL_PLATFORM="cpu",
        VERL_USE_EXTERNAL_MODULES=",".join(external),
        VERL_FILE_LOGGER_PATH=str(file_log),
        TOKENIZERS_PARALLELISM="false",
        ERC_VERL_REPLAY_POLL_S=POLL_S,
        RAY_DEDUP_LOGS="0",
        PYTHONUNBUFFERED="1",
        **private_env,
    )
    # Never join a cluster the smoke did not start: ray.init(address=...) is set explicitly, and
    # RAY_ADDRESS is cleared so nothing in the driver reads a stray one.
    env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        env.update(AUTH_ENV)  # the same mode as the smoke's cluster (ray_cluster.py)
    return SmokePlan(
        recipe,
        run_dir,
        file_log,
        cmd,
        env,
        overrides,
        list(extra_overrides),
        layout,
        trainer_mode,
        console_log=run_dir / "logs" / f"console-{stamp}.log",
        probe_file=probe_file,
        ray_temp_dir=ray_temp_dir,
        ledger=ledger,
    )


# --- the command line ---------------------------------------------------------------------


class SmokeError(Exception):
    """Bad input: one line naming the fix, exit 2."""


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SmokeError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def layout_from_env(recipe: str, recipes_dir: Path, extra: list[str], rollout: str = DEFAULT_ROLLOUT) -> Layout:
    """NNODES x GPUS_PER_NODE CPU workers (1 x 1 without them), the Ulysses size and the rollout engine."""
    nnodes, per_node = _positive_env("NNODES"), _positive_env("GPUS_PER_NODE")
    nnodes, per_node = nnodes or 1, per_node or 1
    recipe_sp = recipe_ulysses(recipe, recipes_dir, extra)
    sp = pick_ulysses(recipe_sp, nnodes * per_node, ModelSpec().heads)
    return Layout(nnodes, per_node, sp, recipe_sp, rollout)


def recipe_ulysses(recipe: str, recipes_dir: Path, extra: list[str]) -> int | None:
    """The Ulysses size the recipe (with the user's overrides) asks for; None when it cannot be composed."""
    from omegaconf import OmegaConf

    cfg = composed(recipe, recipes_dir, extra)
    for key in (
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    ):
        value = None if cfg is None else OmegaConf.select(cfg, key, default=None)
        if isinstance(value, int):
            return value
    return None


def _size_overrides() -> list[str]:
    """The smoke's own batch sizes (overrides.smoke_overrides), for reading the trainer mode."""
    keys = ("data.train_batch_size=", "actor_rollout_ref.actor.ppo_mini_batch_size=")
    pairs = smoke_overrides(Path("/m"), {"train": "/t", "test": "/v"}, Path("/r"), Path("/r/l.jsonl"))
    return [o for o, _ in pairs if o.startswith(keys)]


def _continuing(path: Path) -> bool:
    return path.exists() and is_run_folder(path)


def _latest_checkpoint(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "latest_checkpointed_iteration.txt").read_text().strip())
    except (OSError, ValueError):
        return None


def _shown(path: Path) -> str:
    """A path as the user types it from the repository root (launch.sh runs there)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.sh --smoke",
        description="Run a recipe through verl's main_ppo on CPU with a tiny model (erc_verl/rehearsal/smoke.py). "
        "Every run writes a new folder runs/smoke/RECIPE/<time>/ (runs/smoke/RECIPE/latest points at the "
        "newest); nothing is removed. Layout rehearsal: NNODES=M GPUS_PER_NODE=N give M x N CPU workers "
        "(M > 1: a local Ray cluster of M nodes).",
    )
    parser.add_argument("recipe", help="a recipe name in recipes/ (e.g. dapo_erc_qwen1.5b)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, applied last")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the run folder itself (default: a new runs/smoke/RECIPE/<time>/); "
        "an existing smoke run folder is continued from its last checkpoint",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the smoke run in DIR (e.g. runs/smoke/RECIPE/latest) "
        "from its last checkpoint; give a larger --steps",
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="training steps in all (default 3; a checkpoint at step 2)"
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=str(DEFAULT_OUT / ".cache"),
        help="cache of the tiny model and data (default runs/smoke/.cache)",
    )
    parser.add_argument(
        "--rollout",
        choices=ROLLOUTS,
        default=DEFAULT_ROLLOUT,
        help="the rollout engine: vllm (default, the recipes' own: verl's vLLM rollout on vLLM's CPU build) "
        "or hf (erc_verl's light CPU backend)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the command and the layout; write and run nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    t0 = time.time()
    try:
        return _main(args, t0)
    except (SmokeError, FileNotFoundError) as err:
        print(f"launch.sh --smoke: error: {err}", file=sys.stderr)
        return 2


def _main(args, t0: float) -> int:
    recipe = _recipe_name(args.recipe, RECIPES_DIR)
    if args.steps < 1:
        raise SmokeError(f"--steps must be at least 1, got {args.steps}")
    if args.out and args.resume:
        raise SmokeError("give --out DIR or --resume DIR, not both")

    # The run folder: continued, named, or new.
    resume = False
    if args.resume:
        run_dir = Path(args.resume).resolve()
        if not _continuing(run_dir):
            raise SmokeError(
                f"--resume {args.resume}: not a smoke run folder (no {MARKER}); "
                "fix: name one, e.g. runs/smoke/RECIPE/latest"
            )
        resume = True
    elif args.out:
        run_dir = Path(args.out).resolve()
        if _continuing(run_dir):
            resume = True
        elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise SmokeError(
                f"--out {args.out}: exists and is not a smoke run folder; fix: name a new or empty "
                "folder (or an existing smoke run to continue it)"
            )
    else:
        run_dir = None  # a new runs/smoke/RECIPE/<time>/, made below
    if resume:
        marker = read_marker(run_dir) or {}
        if marker.get("recipe") not in (None, recipe):
            raise SmokeError(
                f"{run_dir} is a smoke run of {marker['recipe']}, not {recipe}; "
                f"fix: launch.sh --smoke --resume {run_dir} {marker['recipe']}"
            )
        done = _latest_checkpoint(run_dir)
        if done is not None and args.steps <= done:
            raise SmokeError(
                f"{run_dir} has a checkpoint at step {done} already; fix: --steps {done + 1} or more to train further"
            )

    layout = layout_from_env(recipe, RECIPES_DIR, args.overrides, args.rollout)
    if layout.rollout == "vllm":
        _require_vllm()
    try:
        mode = read_trainer_mode(recipe, RECIPES_DIR, args.overrides, _size_overrides())
    except TrainerModeError as err:
        raise SmokeError(str(err)) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    recipe_dir = (Path.cwd() / DEFAULT_OUT / recipe).resolve()
    shown_dir = run_dir if run_dir is not None else recipe_dir / stamp
    cluster = (
        LocalRayCluster(
            layout.nnodes, RAY_CPUS_PER_NODE, log=print, resources={layout_probe.SLOT_RESOURCE: layout.workers_per_node}
        )
        if layout.nnodes > 1
        else None
    )
    ray_temp = None if cluster else private_temp_dir()
    kwargs = dict(
        steps=args.steps,
        run_dir=shown_dir,
        cache_dir=args.cache,
        layout=layout,
        ray_address=cluster.address if cluster else None,
        ray_temp_dir=ray_temp,
        probe=True,
        trainer_mode=mode,
        worker_slots=cluster is not None,
        stamp=stamp,
        private_dir=cluster.temp_dir if cluster is not None else ray_temp,
    )

    if args.dry_run:
        plan = build_smoke(recipe, DEFAULT_OUT, args.overrides, prepare=False, **kwargs)
        print(plan.describe())
        if cluster is not None:
            print(f"# local Ray cluster of {layout.nnodes} nodes, started first and stopped afterwards:")
            for cmd in cluster.node_commands():
                print("#   " + " ".join(shlex.quote(c) for c in cmd))
        print("# dry run: nothing written (the model cache is built on the first real run)")
        return 0

    if run_dir is None:
        run_dir = new_run_dir(recipe_dir, stamp)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    kwargs["run_dir"] = run_dir
    if cluster is not None:
        cluster._log_dir = run_dir / "logs"  # `ray start` output kept with the run
    plan = build_smoke(recipe, DEFAULT_OUT, args.overrides, **kwargs)
    header = plan.describe()
    print(header, flush=True)
    if cluster is not None:
        print(f"# local Ray cluster of {layout.nnodes} nodes (private temp dir {cluster.temp_dir})", flush=True)
    model_dir, _ = asset_paths(Path(args.cache).resolve(), ModelSpec())
    marker = start_launch(run_dir, recipe, model_dir, stamp, sys.argv[1:])

    rc, status = None, "failed"

    def on_sigterm(signum, frame):  # `kill PID` or a job timeout: stop main_ppo and the cluster like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    ledger = ShmLedger(plan.ledger)
    watch = FailureWatch(log=lambda text: print(text, file=sys.stderr, flush=True))

    def on_line(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()
        watch.on_line(line)

    try:
        if cluster is not None:
            cluster.start()
        else:
            ray_temp.mkdir(parents=True)
        Path(plan.env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
        ledger.start()
        rc = run_main_ppo(plan, capture=plan.console_log, header=header, on_line=on_line, on_start=watch.start)
        status = "done" if rc == 0 else "failed"
    except KeyboardInterrupt:
        status = "interrupted"
        print("\n[smoke] interrupted: main_ppo and its Ray processes stopped", file=sys.stderr)
    except RuntimeError as err:  # the local Ray cluster did not come up, or the output could not be shown
        print(f"[smoke] {err}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        watch.finish()
        if cluster is not None:
            cluster.stop()
            cluster.remove_temp_dir()
        elif ray_temp is not None:
            shutil.rmtree(ray_temp, ignore_errors=True)  # made by this run, above
        _remove_leftovers(ledger)
        steps = trained_steps(plan.file_log)
        marker = finish_launch(run_dir, marker, status, rc, steps)
        seen = _write_layout(plan, run_dir, stamp)
    took = time.time() - t0
    if seen and seen.get("rollout_name"):
        print(
            f"[smoke] rollout engine: {seen['rollout_name']} {seen['rollout_version']}, "
            f"{seen['rollout_replicas']} replica(s) (read from the running servers; layout.json)"
        )
    trained = marker.get("trained_steps", [])
    latest = None
    if trained and run_dir.parent == recipe_dir:
        latest = point_latest(run_dir)
    where = _shown(latest if latest is not None else run_dir)
    if status == "done":
        print(
            f"[smoke] {recipe}: done in {took:.0f}s; trained steps {steps} (all: {trained}); run folder {_shown(run_dir)}"
        )
        print(
            f"[smoke] console log {_shown(plan.console_log)}, metrics {_shown(plan.file_log)}, layout "
            f"{_shown(run_dir / 'layout.json')}"
        )
        print("[smoke] next, from the repository root:")
        print(f"  scripts/erc-verl table {where}")
        print(f"  scripts/erc-verl plot {where}        # writes {_shown(run_dir)}/plot.png")
        print(f"  scripts/launch.sh --smoke --resume {where} {recipe} --steps {args.steps + 1}   # one step more")
        return 0
    before = "" if trained else ", before its first training step"
    if watch.failure() is not None:
        print(f"[smoke] {recipe}: {watch.failure()}", file=sys.stderr)
    print(
        f"[smoke] {recipe}: main_ppo {status if rc is None else f'exited with {rc}'} after {took:.0f}s{before}. "
        f"Run folder {_shown(run_dir)} is marked {status} ({MARKER})"
        + ("; erc-verl table skips it" if not trained else "")
        + f". Console log: {_shown(plan.console_log)}",
        file=sys.stderr,
    )
    return 130 if status == "interrupted" else (rc if rc else 1)


def _remove_leftovers(ledger: ShmLedger) -> None:
    """The /dev/shm files the run's processes left (leftovers.py); only those, whatever the outcome."""
    ledger.stop()
    files, size = ledger.remove()
    if files:
        print(
            f"[smoke] removed {files} shared-memory file(s) the run's processes left in /dev/shm "
            f"({size / 2**20:.0f} MiB; names in {_shown(ledger.path)})",
            file=sys.stderr,
        )


def _require_vllm() -> None:
    """The recipes' vLLM rollout needs vLLM's CPU build at verl's pin: one line naming the fix, before Ray starts."""
    from importlib.metadata import PackageNotFoundError, version

    from erc_verl.cpu.vllm_hooks import DISTRIBUTION, VLLM_VERSION

    found = None
    for name in (DISTRIBUTION, "vllm"):
        try:
            found = (name, version(name))
            break
        except PackageNotFoundError:
            continue
    if found is None or found[1].split("+")[0] != VLLM_VERSION:
        have = "no vLLM" if found is None else f"{found[0]} {found[1]}"
        raise SmokeError(
            f"the recipes' vLLM rollout needs {DISTRIBUTION}=={VLLM_VERSION} (verl 0.9.1's vLLM pin, CPU build); "
            f"this environment has {have}; fix: bash scripts/setup_venv.sh installs it into .venv, or --rollout hf"
        )


def _write_layout(plan: SmokePlan, run_dir: Path, stamp: str) -> dict | None:
    """layout.json (layout-<time>.json for a continued run): the layout, where Ray put each rank, the rollout engine."""
    if plan.probe_file is None:
        return None
    seen = layout_probe.summarize(plan.probe_file)
    layout = plan.layout
    data = {
        "world_size": layout.world_size,
        "nnodes": layout.nnodes,
        "workers_per_node": layout.workers_per_node,
        "ulysses_sequence_parallel_size": layout.ulysses,
        "recipe_ulysses_sequence_parallel_size": layout.recipe_ulysses,
        "rollout_tensor_parallel_size": 1,
        "rollout_name": seen["rollout_name"],
        "rollout_version": seen["rollout_version"],
        "rollout_replicas": seen["rollout_replicas"],
        "nodes": seen["nodes"],
        "micro_batches_per_mini_batch": seen["micro_batches_per_mini_batch"],
        **plan.trainer_mode.layout(),
        "mini_batches_recorded": seen["mini_batches_recorded"],
        "source": f"nodes and micro-batches recorded in the training workers through Ray, the rollout engine in "
        f"its servers ({plan.probe_file.name})",
    }
    path = run_dir / "layout.json"
    if path.exists():
        path = run_dir / f"layout-{stamp}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    sys.exit(main())
