"""ERC at small scale: training dynamics of ERC against PPO-clip, GPPO and a random-drop control.

A GRPO loop around verl 0.9.1's engine TrainingWorker (the update path the tests drive,
tests/harness/training_worker.py) on a grammar task with a tiny Qwen2 (benchmarks/dynamics/
task.py): 16 prompts x 4 responses per step, 8 mini-batches per rollout batch (7 of 8
optimizer steps off-policy), clip 0.2/0.28, dual-clip 10, token-mean. Variants: `vanilla`
(PPO-clip, entropy_ratio_monitor on), `dapo_erc`, `random_drop` (PPO-clip with a random
token gate at the dapo_erc run's measured keep fraction, per step and mini-batch; a loss the
study registers, benchmarks/dynamics/control.py), `gppo` (monitor on) and `gppo_erc`. ERC is
always the plugin's registered loss; every ERC run is gate-audited (d pg_loss / d log_prob on
each out-of-band token must be 0).

The design (SETTINGS) was fixed before the first full run: a base setting at the drifting
learning rate and one-factor-at-a-time changes from it; the stale-rollout settings (responses
sampled from weights k optimizer steps older than the old-log-prob weights, as verl's
asynchronous trainers produce them) were fixed before they ran. Every seed has its own SFT warm start
(cached under --cache-dir); all variants of a seed start from it and see the same prompts.

    python benchmarks/erc_dynamics_cpu.py            # the full study -> benchmarks/results/
    python benchmarks/erc_dynamics_cpu.py --quick    # 2 seeds, 3 steps, base setting -> runs/

Outputs: <out>/<prefix>.md (tables), <prefix>_<setting>.png (figures), <prefix>.json (every
run's per-step series, the statistics and the invariants), <prefix>.jsonl (raw records; a
rerun resumes from it). The last line printed is `invariants: control_keep_ok=... gate_ok=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
# The engine harness lives in tests/harness (not part of the installed package).
sys.path.insert(0, str(ROOT / "tests"))

ALL_VARIANTS = ("dapo_erc", "random_drop", "vanilla", "gppo", "gppo_erc")
# name -> (lr, band, positive_nll_coeff, stale (default 0), variants, why). Fixed before running.
SETTINGS = {
    "base": dict(
        lr=1e-3,
        band=(0.95, 1.05),
        nll=0.0,
        variants=ALL_VARIANTS,
        why="the drifting learning rate, the paper's band, the paper text's objective",
    ),
    "lr3e-4": dict(lr=3e-4, band=(0.95, 1.05), nll=0.0, variants=ALL_VARIANTS, why="a stable learning rate"),
    "nll0.1": dict(
        lr=1e-3,
        band=(0.95, 1.05),
        nll=0.1,
        variants=ALL_VARIANTS,
        why="the authors' positive-sample NLL term (0.1, in every variant, as in their runs)",
    ),
    # vanilla and gppo do not depend on the band (the monitor changes no gradient): see base.
    "band0.9": dict(
        lr=1e-3,
        band=(0.9, 1.1),
        nll=0.0,
        variants=("dapo_erc", "random_drop", "gppo_erc"),
        why="a wider band, 0.9/1.1 (vanilla and gppo train exactly as in base)",
    ),
    # Stale rollouts, as verl's asynchronous trainers produce them: sampled from weights k
    # optimizer steps older than the old-log-prob weights (H_old and the PPO ratio's anchor).
    # k = 0 is `base`. k = 8 is one whole step of 8 mini-batches: a rollout one weight version
    # old, what colocate_async gives with one batch of prefetch.
    "stale1": dict(
        lr=1e-3,
        band=(0.95, 1.05),
        nll=0.0,
        stale=1,
        variants=ALL_VARIANTS,
        why="rollouts 1 optimizer step older than the old-log-prob weights (k = 0 is base)",
    ),
    "stale2": dict(
        lr=1e-3,
        band=(0.95, 1.05),
        nll=0.0,
        stale=2,
        variants=ALL_VARIANTS,
        why="rollouts 2 optimizer steps older than the old-log-prob weights",
    ),
    "stale8": dict(
        lr=1e-3,
        band=(0.95, 1.05),
        nll=0.0,
        stale=8,
        variants=ALL_VARIANTS,
        why="rollouts one whole step (8 optimizer steps, one weight version) older than the old-log-prob weights",
    ),
    "stale8_lr3e-4": dict(
        lr=3e-4,
        band=(0.95, 1.05),
        nll=0.0,
        stale=8,
        variants=ALL_VARIANTS,
        why="one weight version stale at the stable learning rate (compare lr3e-4)",
    ),
}
FULL = dict(seeds=5, steps=30, settings=list(SETTINGS))
QUICK = dict(seeds=2, steps=3, settings=["base"])
DISPLAY_ORDER = ("vanilla", "dapo_erc", "random_drop", "gppo", "gppo_erc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 seeds, 3 steps, base setting only, into runs/")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (full: 5)")
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (full: 30)")
    p.add_argument("--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    p.add_argument("--jobs", type=int, default=1, help="processes, one (setting, seed) unit each")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: 2 // jobs)")
    p.add_argument(
        "--out-dir", default=None, help="default: benchmarks/results (full), runs/erc_dynamics_quick (quick)"
    )
    p.add_argument("--prefix", default="erc_dynamics_cpu")
    p.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "erc_verl", "dynamics"),
        help="where the SFT warm starts are cached",
    )
    p.add_argument("--machine", default="the 2-core CPU machine", help="named in the report")
    p.add_argument("--note", default="", help="a line added under the report's heading (e.g. why a run is partial)")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <prefix>.jsonl")
    p.add_argument("--fresh", action="store_true", help="ignore records already in <prefix>.jsonl")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--invocation", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    args.seeds = args.seeds or plan["seeds"]
    args.steps = args.steps or plan["steps"]
    args.settings = args.settings.split(",") if args.settings else plan["settings"]
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    if args.out_dir is None:
        args.out_dir = str(ROOT / ("runs/erc_dynamics_quick" if args.quick else "benchmarks/results"))
    return args


def _rounded(x):
    # 6 significant digits keep the committed records small; nothing in the report needs more.
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


def _append(path: Path, record: dict) -> None:
    line = (json.dumps(_rounded(record)) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_unit(args, setting_name: str, seed: int, jsonl: Path, done: set) -> None:
    """Every variant of one (setting, seed), dapo_erc first (the control uses its keep fractions)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from dynamics import loop, task

    setting = SETTINGS[setting_name]
    grammar = task.Grammar()
    model_dir = task.warm_start(args.cache_dir, seed, grammar)
    erc_keep = None
    for variant in ALL_VARIANTS:
        if variant not in setting["variants"]:
            continue
        key = (setting_name, seed, variant)
        if key in done:
            if variant == "dapo_erc":
                erc_keep = next(r for r in read_records(jsonl) if (r["setting"], r["seed"], r["variant"]) == key)[
                    "series"
                ]["keep_mb"]
            continue
        t0 = time.time()
        rec = loop.run(
            variant,
            setting,
            seed,
            model_dir,
            args.steps,
            erc_keep=erc_keep,
            grammar=grammar,
            log=lambda msg: print(f"[{setting_name}] {msg}", flush=True),
        )
        rec.update(
            setting=setting_name,
            wall_s=time.time() - t0,
            # Where and how this run was made: a resumed study mixes invocations, and the report
            # names each from its records, never from the invocation that writes it.
            run=dict(
                invocation=args.invocation,
                machine=args.machine,
                threads=args.threads,
                jobs=args.jobs,
                python=platform.python_version(),
                finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            ),
        )
        if variant == "dapo_erc":
            erc_keep = rec["series"]["keep_mb"]
        _append(jsonl, rec)
        print(f"[{setting_name}] done {variant} seed {seed} in {rec['wall_s']:.1f}s", flush=True)


def provenance(records: list[dict]) -> str:
    """Where and how the records were made, read from the records themselves."""
    groups: dict = {}
    for r in records:
        run = r.get("run") or {}
        groups.setdefault(run.get("invocation"), []).append(r)
    parts = []
    for invocation, recs in groups.items():
        run = recs[0].get("run") or {}
        total = sum(float(r.get("wall_s") or 0.0) for r in recs)
        if invocation is None:
            parts.append(
                f"{len(recs)} run(s) without a recorded machine or invocation ({total / 60:.1f} min of run time)"
            )
            continue
        finished = sorted(str((r.get("run") or {}).get("finished", "")) for r in recs)
        parts.append(
            f"{len(recs)} run(s) on {run.get('machine')}, {run.get('jobs')} process(es) x {run.get('threads')} "
            f"torch thread(s), Python {run.get('python')}, finished {finished[0]} to {finished[-1]}, "
            f"{total / 60:.1f} min of run time summed over runs"
        )
    return "Runs: " + "; ".join(parts) + "." if parts else "No runs."


def write_report(args, records: list[dict], wall_s: float | None, out: Path) -> dict:
    from dynamics import loop, report, task

    records = [r for r in records if r["setting"] in args.settings and r["seed"] < args.seeds]
    inv = report.invariants(records)
    stats = [dict(setting=r["setting"], seed=r["seed"], variant=r["variant"], **report.run_stats(r)) for r in records]
    (out / f"{args.prefix}.json").write_text(
        json.dumps(
            {
                "design": {
                    k: dict(v, band=list(v["band"]), variants=list(v["variants"]))
                    for k, v in SETTINGS.items()
                    if k in args.settings
                },
                "seeds": args.seeds,
                "steps": args.steps,
                "this_invocation_wall_s": wall_s,
                "provenance": provenance(records),
                "stats": stats,
                "invariants": inv,
                "records": f"{args.prefix}.jsonl",
            },
            indent=1,
        )
    )

    grammar = task.Grammar()
    lines = [
        "# ERC at small scale: training dynamics on CPU",
        "",
        f"Produced by `python benchmarks/erc_dynamics_cpu.py{' --quick' if args.quick else ''}`. "
        + provenance(records)
        + (f" This invocation took {wall_s / 60:.1f} min of wall time." if wall_s else ""),
        "What it is and how to read it: docs/erc-at-small-scale.md.",
        "",
        *([args.note, ""] if args.note else []),
        f"Task: random Markov chain over {len(grammar.content)} content tokens (1/2/4/8 successors, good half of each), "
        f"tiny Qwen2 (hidden 64, 2 layers, vocab {task.VOCAB}), SFT warm start per seed ({task.SFT_STEPS} steps), "
        f"{task.PROMPT_LEN}-token prompts, {task.RESPONSE_LEN}-token responses; the optimum's entropy (uniform over "
        f"the good half) is {grammar.optimum_entropy():.3f} nats per token. Per step {loop.PROMPTS} prompts x "
        f"{loop.GROUP} responses, GRPO advantages, {loop.MINI_BATCHES} mini-batches, clip {loop.CLIP_LOW}/"
        f"{loop.CLIP_HIGH}, dual-clip {loop.CLIP_C}, token-mean, grad clip 1.0, Adam. {args.seeds} seeds x "
        f"{args.steps} steps per run.",
        "",
        "Columns: final = mean over the last 3 steps; max entropy jump = largest |change| of the mean rollout "
        "entropy between consecutive steps; grad norms over every mini-batch of the run (before clipping); "
        "ERC cut frac = 1 - mean `actor/erc_keep_frac` over the run: the tokens ERC cut for dapo_erc/gppo_erc, "
        "the tokens it WOULD cut (monitor) for the others; the control's own random cut is listed below "
        "each table; mean ppo_kl over all mini-batches.",
        "",
        "## Invariants",
        "",
        f"- Control keep rate vs its dapo_erc run (per step, mean over mini-batches): "
        f"{'OK' if inv['control_keep_ok'] else 'VIOLATED'}; largest per-step difference "
        f"{max((p['max_step_diff'] for p in inv['control_keep']), default=float('nan')):.4f} "
        f"(tolerance {inv['tolerance_step']}), largest run-mean difference "
        f"{max((p['run_diff'] for p in inv['control_keep']), default=float('nan')):.4f} (tolerance {inv['tolerance_run']}).",
        f"- ERC gate audit (d pg_loss / d log_prob per token, erc_verl.rehearsal.gate_audit): "
        f"{'OK' if inv['gate_ok'] else 'VIOLATED'}; {inv['out_of_band_tokens']} out-of-band tokens checked, "
        f"{inv['out_of_band_with_grad']} with non-zero gradient.",
        "",
    ]
    for name in args.settings:
        s = SETTINGS[name]
        recs = [r for r in records if r["setting"] == name]
        variants = [v for v in DISPLAY_ORDER if v in s["variants"]]
        png = f"{args.prefix}_{name}.png"
        done = {r["variant"]: sum(1 for x in recs if x["variant"] == r["variant"]) for r in recs}
        lines += [
            f"## Setting `{name}`: lr {s['lr']:g}, band {s['band'][0]}/{s['band'][1]}, positive_nll_coeff {s['nll']}"
            + (f", rollouts {s['stale']} optimizer step(s) stale" if s.get("stale") else ""),
            "",
            s["why"] + ".",
            "",
        ]
        if not recs:
            lines += ["Not run.", ""]
            continue
        incomplete = [v for v in variants if done.get(v, 0) < args.seeds]
        if incomplete:
            lines += [f"**Incomplete**: runs finished per variant: {done}.", ""]
        lines += [report.setting_table(recs, variants), ""]
        ctl = [report.run_stats(r)["control_cut_frac"] for r in recs if r["variant"] == "random_drop"]
        if ctl:
            lines += [f"random_drop's own random cut fraction per seed: {', '.join(f'{c:.3f}' for c in ctl)}.", ""]
        report.setting_figure(
            recs,
            variants,
            f"setting {name}: lr {s['lr']:g}, band {s['band'][0]}/{s['band'][1]}, nll {s['nll']}"
            + (f", {s['stale']} steps stale" if s.get("stale") else ""),
            str(out / png),
        )
        lines += [f"![{name}]({png})", ""]
    lines += _staleness_section(args, records)
    (out / f"{args.prefix}.md").write_text("\n".join(lines))
    return inv


def _staleness_section(args, records: list[dict]) -> list[str]:
    """Every stale-rollout setting beside the setting it differs from only in k (k = 0)."""
    from dynamics import report

    groups: dict = {}
    for name in args.settings:
        s = SETTINGS[name]
        key = (s["lr"], tuple(s["band"]), s["nll"], tuple(s["variants"]))
        groups.setdefault(key, []).append((int(s.get("stale", 0)), name))
    lines = []
    for (lr, band, nll, variants), members in groups.items():
        if len(members) < 2 or not any(k for k, _ in members):
            continue
        rows = [(k, name, [r for r in records if r["setting"] == name]) for k, name in sorted(members)]
        if not all(recs for _, _, recs in rows):
            continue
        if not lines:
            lines = [
                "## Stale rollouts side by side",
                "",
                "Rollouts sampled from weights k optimizer steps older than the old-log-prob weights (k = 0: the "
                f"setting without staleness); means over seeds; collapsed = final reward under {report.COLLAPSED}.",
                "",
            ]
        order = [v for v in DISPLAY_ORDER if v in variants]
        lines += [f"lr {lr:g}, band {band[0]}/{band[1]}, positive_nll_coeff {nll}:", ""]
        lines += [report.staleness_table(rows, order), ""]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{args.prefix}.jsonl"
    if args.child:
        setting_name, seed = args.child.split(":")
        done = {(r["setting"], r["seed"], r["variant"]) for r in read_records(jsonl)}
        run_unit(args, setting_name, int(seed), jsonl, done)
        return 0
    if args.fresh and jsonl.exists() and not args.report_only:
        jsonl.unlink()
    if args.threads is None:
        args.threads = max(1, 2 // args.jobs)
    t0 = time.time()
    args.invocation = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not args.report_only:
        from dynamics import task

        for seed in range(args.seeds):  # warm starts once, before the units race for them
            print(f"warm start seed {seed}: {task.warm_start(args.cache_dir, seed)}", flush=True)
        done = {(r["setting"], r["seed"], r["variant"]) for r in read_records(jsonl)}
        units = [
            (s, seed)
            for seed in range(args.seeds)
            for s in args.settings
            if any((s, seed, v) not in done for v in SETTINGS[s]["variants"])
        ]
        child = [
            sys.executable,
            os.path.abspath(__file__),
            "--out-dir",
            str(out),
            "--prefix",
            args.prefix,
            "--cache-dir",
            args.cache_dir,
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--jobs",
            str(args.jobs),
            "--machine",
            args.machine,
            "--invocation",
            args.invocation,
        ]
        running: list[subprocess.Popen] = []
        failed = 0
        while units or running:
            while units and len(running) < args.jobs:
                s, seed = units.pop(0)
                running.append(subprocess.Popen(child + ["--child", f"{s}:{seed}"]))
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                failed += proc.returncode != 0
        if failed:
            print(f"{failed} unit(s) failed; the report covers what finished", flush=True)
    wall = None if args.report_only else time.time() - t0
    inv = write_report(args, read_records(jsonl), wall, out)
    print(f"report: {out / (args.prefix + '.md')}")
    print(f"invariants: control_keep_ok={inv['control_keep_ok']} gate_ok={inv['gate_ok']}")
    return 0 if (inv["control_keep_ok"] and inv["gate_ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
