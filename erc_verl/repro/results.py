"""`erc-verl table` and `erc-verl plot`: results from verl 0.9.1's file logger.

verl's `file` logger (verl/utils/tracking.py, FileLogger) writes one JSON object per logged
step, `{"step": N, "data": {metric: value, ...}}`, to $VERL_FILE_LOGGER_PATH or else to
$VERL_FILE_LOGGER_ROOT/<project_name>/<experiment_name>.jsonl (root defaults to the cwd). It
opens the file with "wb", so a resumed run starts a new file: scripts/launch.sh gives every
launch its own metrics-<time>.jsonl, and here all files of a run are merged, later ones winning
for the same step.

A folder holding several run folders (runs/smoke, the demo's output) gives one run per
folder. Also read: flat rows `{"step": N, "run": NAME, metric: value, ...}`, one run per
distinct `run` value. Lines that are neither are
counted and reported once per file; input with no readable record at all is an error that
says what was expected.

Validation metrics of the V1 trainer (trainer_base._val_metrics_update) are named
`val-core/<data_source>/<var>/mean@<n>`, where n is the number of samples per problem (32 in the
paper's runs: avg@32) and var is `acc` when the reward returns it (erc_verl.repro.reward does).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

VAL_KEY = re.compile(r"^val-core/(?P<source>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")

# Curves of `erc-verl plot`: (metric key, panel title). The validation panel is added after.
TRAIN_CURVES = (
    ("actor/entropy", "policy entropy"),
    ("actor/erc_keep_frac", "ERC keep fraction"),
    ("actor/grad_norm", "gradient norm"),
)

# Averages published for the paper's runs (docs/algorithm.md, "The paper's runs"; from secondary summaries;
# average over the paper's benchmark set, per-benchmark cells not available).
PAPER_AVERAGES = {
    ("1.5B", "dapo"): 53.4,
    ("1.5B", "dapo_erc"): 55.1,
    ("7B", "dapo"): 65.3,
    ("7B", "dapo_erc"): 66.2,
}

# Log folders that are not the run's name (scripts/launch.sh layout: <CKPT_DIR>/<run>/logs/).
_LOG_DIR_NAMES = {"logs"}
# The marker erc_verl.rehearsal.smoke writes in each run folder (erc_verl/rehearsal/run_folder.py).
SMOKE_MARKER = "erc_verl_smoke_run.json"


@dataclass
class Run:
    """Metrics of one run: {step: {metric: value}}."""

    name: str
    steps: dict[int, dict[str, float]] = field(default_factory=dict)
    # A `scripts/launch.sh --smoke` run: a tiny CPU model, whatever the recipe's name says.
    smoke: bool = False

    @property
    def model(self) -> str | None:
        if self.smoke:
            return "tiny CPU smoke model"
        m = re.search(r"qwen[-_]?(1\.5b|7b)", self.name, re.IGNORECASE)
        return m.group(1).upper() if m else None

    @property
    def method(self) -> str | None:
        base = self.name.split("/")[0].lower()
        for method in ("dapo_erc", "gppo_erc", "dapo", "gppo"):
            if base.startswith(method):
                return method
        return None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(s, m[key]) for s, m in sorted(self.steps.items()) if key in m and _finite(m[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    def val_scores(self, var: str = "acc") -> dict[int, dict[str, float]]:
        """{step: {benchmark: mean@n}} for every step with validation metrics (largest n per benchmark)."""
        out: dict[int, dict[str, float]] = {}
        for step, metrics in sorted(self.steps.items()):
            best_n: dict[str, int] = {}
            for key, value in metrics.items():
                m = VAL_KEY.match(key)
                if not m or m.group("var") != var or not _finite(value):
                    continue
                source, n = m.group("source"), int(m.group("n"))
                if n >= best_n.get(source, -1):
                    best_n[source] = n
                    out.setdefault(step, {})[source] = float(value)
        return out


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value):
    """verl logs scalars; a list (unreduced metric) is averaged."""
    if isinstance(value, list) and value and all(_finite(v) for v in value):
        return sum(value) / len(value)
    return value


EXPECTED = (
    'verl file-logger lines {"step": N, "data": {metric: value}} (trainer.logger includes "file"), '
    'or erc-verl demo rows {"step": N, "run": NAME, metric: value}'
)


def _parse_record(line: str) -> tuple[str | None, int, dict]:
    """(run or None, step, metrics) of one line; raises ValueError/KeyError/TypeError if neither layout."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise TypeError("not an object")
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int | float) or int(step) != step:
        raise TypeError("step is not an integer")
    if isinstance(record.get("data"), dict):  # verl's FileLogger
        return None, int(step), record["data"]
    metrics = {k: v for k, v in record.items() if k not in ("step", "run") and _finite(_scalar(v))}
    if "/" not in "".join(metrics):  # flat rows carry verl metric names (actor/..., critic/...)
        raise KeyError("data")
    run = record.get("run")
    return (str(run) if run is not None else None), int(step), metrics


def read_log_file(
    path: Path, steps: dict[int, dict[str, float]], by_run: dict[str, dict] | None = None, warnings=None
) -> int:
    """Merge the records of one file into `steps` (or `by_run` for rows naming a run).

    Returns the number of records read. Unreadable lines (a partial last line of a killed run,
    or a file that is not a metrics log) are counted: one warning per file, appended to
    `warnings` when given, else printed.
    """

    def warn(message):
        if warnings is None:
            print(message, file=sys.stderr)
        else:
            warnings.append(message)

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        warn(f"warning: {path}: skipped, not readable as text ({type(exc).__name__})")
        return 0
    read, bad, first_bad = 0, Counter(), None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            run, step, data = _parse_record(line)
        except (ValueError, KeyError, TypeError) as exc:
            bad[type(exc).__name__] += 1
            first_bad = first_bad or lineno
            continue
        target = steps if run is None or by_run is None else by_run.setdefault(run, {})
        target.setdefault(step, {}).update({k: _scalar(v) for k, v in data.items()})
        read += 1
    if bad:
        n = sum(bad.values())
        what = "not a metrics log" if not read else f"line {first_bad} first"
        warn(f"warning: {path}: skipped {n} unreadable line(s) ({what}; {', '.join(bad)})")
    return read


def run_name(path: Path) -> str:
    """Experiment name: the file stem for verl's default <experiment_name>.jsonl, else the folder."""
    if path.is_file() and not path.stem.startswith("metrics-"):
        return path.stem
    folder = path if path.is_dir() else path.parent
    parts = []
    while folder.name in _LOG_DIR_NAMES or folder.name.startswith("eval"):
        if folder.name.startswith("eval"):
            parts.insert(0, folder.name)
        folder = folder.parent
    return "/".join([folder.name or str(folder), *parts])


def _run_root(f: Path) -> Path:
    """The run folder of a log file: above logs/ (and eval*/) folders."""
    folder = f.parent
    while folder.name in _LOG_DIR_NAMES or folder.name.startswith("eval"):
        folder = folder.parent
    return folder


def _smoke_marker(folder: Path) -> dict | None:
    """The marker erc_verl.rehearsal.smoke writes in a run folder, or None."""
    try:
        marker = json.loads((folder / SMOKE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else {}


def _smoke_skip_note(folder: Path, marker: dict) -> str | None:
    """Why a smoke run folder holds no result: it failed or was stopped before its first training step."""
    status = marker.get("status")
    if status in ("failed", "interrupted") and not marker.get("trained_steps"):
        rc = (marker.get("launches") or [{}])[-1].get("rc")
        how = status + (f" (exit {rc})" if rc not in (None, 0) else "")
        return (
            f"note: skipped {folder}: a smoke run that {how} before its first training step; "
            f"its console log is in {folder / 'logs'}"
        )
    return None


def _under_link(f: Path, top: Path) -> bool:
    """True when f is reached through a symlinked folder below top (a `latest` link)."""
    here = top
    for part in f.relative_to(top).parts[:-1]:
        here = here / part
        if here.is_symlink():
            return True
    return False


def _smoke_run_name(folder: Path, marker: dict) -> str:
    """A smoke run is named by its recipe, plus the run folder's name when that is not the recipe."""
    recipe = str(marker.get("recipe") or folder.name)
    return recipe if folder.name == recipe else f"{recipe}/{folder.name}"


def load_runs(path: str | Path) -> list[Run]:
    """The runs of a log file, or of every *.jsonl under a folder (merged in name order).

    A verl file log is one run; demo rows naming a `run` give one run each. A `latest` link is
    followed (and not counted twice beside the run it names); a smoke run that failed before its
    first training step is skipped with a note. Raises UserError when the path holds no readable
    record.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # runs/smoke/RECIPE/latest -> the run folder it names
    if path.is_dir():
        files = sorted((f for f in path.rglob("*.jsonl") if not _under_link(f, path)), key=lambda p: (p.name, str(p)))
        if not files:
            marker = _smoke_marker(path)
            note = _smoke_skip_note(path, marker) if marker is not None else None
            raise UserError(
                (note.removeprefix("note: ") + "; " if note else f"{path}: no *.jsonl file in this folder; ")
                + "fix: name a run folder whose logs/ holds metrics-*.jsonl (trainer.logger includes file), "
                "e.g. runs/smoke/RECIPE/latest or $CKPT_DIR/<run>"
            )
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"no such log file or folder: {path}")
    # One run per run folder (a folder of runs, e.g. runs/smoke or the demo's output, gives
    # several); the files of one run are merged in name order.
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(_run_root(f), []).append(f)
    runs: list[Run] = []
    by_run: dict[str, dict] = {}
    warnings: list[str] = []
    notes: list[str] = []
    records = 0
    for root, group in groups.items():
        marker = _smoke_marker(root)
        note = _smoke_skip_note(root, marker) if marker is not None else None
        if note is not None:
            notes.append(note)
            continue
        if marker is not None:
            name = _smoke_run_name(root, marker)
        else:
            name = run_name(group[0]) if path.is_dir() and group[0].parent != path else run_name(path)
        run = Run(name, smoke=marker is not None)
        records += sum(read_log_file(f, run.steps, by_run, warnings) for f in group)
        if run.steps:
            runs.append(run)
    for message in notes:
        print(message, file=sys.stderr)
    if not records:
        if notes and len(notes) == len(groups):
            raise UserError(
                f"{path}: every run here failed before its first training step (see the notes); "
                "fix: rerun the smoke (scripts/launch.sh --smoke RECIPE) and name its new run folder"
            )
        raise UserError(f"{path}: no metrics record in {len(files)} .jsonl file(s); expected {EXPECTED}")
    for message in warnings:  # some files or lines unreadable beside real records: say so
        print(message, file=sys.stderr)
    return runs + [Run(name, steps) for name, steps in by_run.items()]


def load_run(path: str | Path) -> Run:
    """The single run of a log file or folder (see load_runs)."""
    runs = load_runs(path)
    if len(runs) != 1:
        raise UserError(f"{path}: holds {len(runs)} runs ({', '.join(r.name for r in runs)}), expected one")
    return runs[0]


def _avg(scores: dict[str, float], benchmarks: list[str]) -> float | None:
    if not benchmarks or any(b not in scores for b in benchmarks):
        return None
    return sum(scores[b] for b in benchmarks) / len(benchmarks)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def make_table(runs: list[Run], var: str = "acc", benchmarks: list[str] | None = None) -> str:
    """Markdown table: per run the best and the final validation step, avg@n per benchmark and average."""
    per_run = {id(r): r.val_scores(var) for r in runs}
    found = sorted({b for scores in per_run.values() for step in scores.values() for b in step})
    if not found:
        raise UserError(
            f"no validation metrics (val-core/<data_source>/{var}/mean@N) in {', '.join(r.name for r in runs)}; "
            "fix: logs of a run with trainer.test_freq > 0 (and --var naming a logged variable)"
        )
    unknown = [b for b in benchmarks or () if b not in found]
    if unknown:
        raise UserError(f"--benchmarks {', '.join(unknown)}: not in the logs; fix: some of {','.join(found)}")
    columns = list(benchmarks) if benchmarks else found
    n_samples = sorted(
        {int(m.group("n")) for r in runs for s in r.steps.values() for k in s if (m := VAL_KEY.match(k))}
    )
    at = "/".join(f"avg@{n}" for n in n_samples)
    header = ["run", "model", "row", "step", *columns, "average", "paper average"]
    lines = [_row(header), "|" + "|".join(["---"] * len(header)) + "|"]
    for run in runs:
        scores = per_run[id(run)]
        full = {step: _avg(s, columns) for step, s in scores.items()}
        full = {step: a for step, a in full.items() if a is not None}
        paper = None if run.smoke else PAPER_AVERAGES.get((run.model, run.method))
        paper_cell = "n/a (smoke run)" if run.smoke else f"{paper:.1f}" if paper is not None else "not published"
        picks = []
        if full:
            best = max(full, key=lambda s: (full[s], -s))
            picks = [("best", best), ("final", max(full))]
        elif scores:
            picks = [("final", max(scores))]
        if not picks:
            lines.append(
                _row([run.name, run.model or "?", "no validation", "-", *["-"] * len(columns), "-", paper_cell])
            )
            continue
        for label, step in picks:
            s = scores[step]
            cells = [_pct(s.get(b)) for b in columns]
            lines.append(
                _row([run.name, run.model or "?", label, str(step), *cells, _pct(_avg(s, columns)), paper_cell])
            )
    notes = [
        "",
        f"Scores: {var} {at} in percent, from verl's val-core metrics; average over the columns shown.",
        "Paper average: the published average over the paper's benchmark set (secondary summaries of "
        "arXiv 2512.05591); it matches the average column only when the benchmarks match.",
    ]
    return "\n".join(lines + notes)


def plot_runs(runs: list[Run], out: Path, var: str = "acc") -> Path:
    """One PNG: entropy, ERC keep fraction, gradient norm and validation average against step."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib; fix: pip install 'erc-verl[plots]'") from None
    keys = [key for key, _ in TRAIN_CURVES]
    if not any(run.series(key)[0] for run in runs for key in keys) and not any(run.val_scores(var) for run in runs):
        raise UserError(
            f"none of {', '.join(keys)} or val-core/<data_source>/{var}/mean@N is logged in "
            f"{', '.join(r.name for r in runs)}; nothing to plot"
        )

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=False)
    panels = [*TRAIN_CURVES, (None, f"validation {var} (average over benchmarks)")]
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        drawn = 0
        for run in runs:
            if key is None:
                scores = run.val_scores(var)
                benchmarks = sorted({b for s in scores.values() for b in s})
                pts = [(step, _avg(s, benchmarks)) for step, s in sorted(scores.items())]
                xs = [p[0] for p in pts if p[1] is not None]
                ys = [p[1] for p in pts if p[1] is not None]
                style = {"marker": "o"}
            else:
                xs, ys = run.series(key)
                style = {}
            if xs:
                ax.plot(xs, ys, label=run.name, **style)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs",
        nargs="+",
        help="run folders (all *.jsonl under them, e.g. $CKPT_DIR/<run>) or verl file-logger .jsonl files",
    )
    parser.add_argument("--var", default="acc", help="validation variable (default: acc)")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument(
        "--benchmarks", default=None, help="comma-separated data_source columns, in order (default: all found)"
    )


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="PNG file to write (default: plot.png in the run folder, or beside the log file; "
        "plot-2.png, ... when that exists)",
    )


def _load_all(paths) -> list[Run]:
    return [run for p in paths for run in load_runs(p)]


def table_main(args) -> int:
    runs = _load_all(args.runs)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()] if args.benchmarks else None
    print(make_table(runs, args.var, benchmarks))
    return 0


def default_plot_path(paths) -> Path:
    """plot.png next to the run: in the run folder (a `latest` link followed), or beside a log
    file; never over an existing file (plot-2.png, plot-3.png, ...)."""
    if len(paths) != 1:
        raise UserError(f"plot of {len(paths)} runs: fix: name the PNG with --out FILE.png")
    path = Path(paths[0])
    path = path.resolve() if path.is_symlink() else path
    folder = path if path.is_dir() else path.parent
    stem = "plot" if path.is_dir() else f"{path.stem}-plot"
    for i in range(1, 1000):
        out = folder / (f"{stem}.png" if i == 1 else f"{stem}-{i}.png")
        if not out.exists():
            return out
    raise UserError(f"{folder}: no free plot file name; fix: --out FILE.png")


def plot_main(args) -> int:
    if args.out is not None and args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: expected a .png file name")
    runs = _load_all(args.runs)
    out = args.out if args.out is not None else default_plot_path(args.runs)
    print(f"wrote {plot_runs(runs, out, args.var)}")
    return 0
