"""`erc-verl demo`: ERC end to end on CPU, through verl's own trainer, in a few minutes.

This module parses the command line and runs the steps in order: the warm-up (smoke.py's
`prepare_assets`), one main_ppo run per loss mode (demo_runs.py), the self-checks including the
gate audit (demo_checks.py, gate_audit.py), the figure and summary (demo_report.py). What each
step does and why: docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import smoke
from .demo_checks import self_checks
from .demo_report import plot, write_summary
from .demo_runs import MODES, model_spec, run_mode
from .demo_validate import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Warm up a tiny Qwen2 on addition, then train it with GRPO through verl's own trainer "
        "(python -m verl.trainer.main_ppo, CPU rollout backend `hf`) once per loss mode from the same warm "
        "start and seed, and compare them from verl's file logs: writes demo.png, summary.md, checks.json "
        "and one run folder per mode (verl's file log, main_ppo.log, the gate audit) under --out."
    )
    g = parser.add_argument_group("run")
    g.add_argument(
        "--out",
        default="runs/demo",
        help="output folder: each demo writes a new OUT/<time>/, OUT/latest points at the newest",
    )
    g.add_argument("--steps", type=int, default=20, help="training steps per loss mode")
    g.add_argument("--seed", type=int, default=0, help="seed of the warm-up, the data order and the rollout sampling")
    g.add_argument(
        "--loss-modes",
        default="vanilla,dapo_erc",
        help="comma-separated loss modes, each run through its recipe: "
        + ", ".join(f"{m} ({r}.yaml, clip {lo}/{hi})" for m, (r, lo, hi) in MODES.items())
        + "; dual-clip 10 for all; baselines log the ERC monitor",
    )
    g.add_argument(
        "--band",
        type=float,
        nargs=2,
        default=(0.95, 1.05),
        metavar=("LOW", "HIGH"),
        help="ERC entropy-ratio band (low, high); also the band the baselines' monitor and the gate audit use",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=2,
        help="CPU threads per process (torch in the warm-up, OMP_NUM_THREADS in verl's workers)",
    )
    g.add_argument("--timeout", type=float, default=900, help="seconds each main_ppo run may take before it is stopped")
    g.add_argument("--strict", action="store_true", help="exit with status 1 if a self-check fails")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG figure")
    g.add_argument("--quiet", action="store_true", help="print only the demo's own lines, not one per training step")

    spec = smoke.ModelSpec()  # the smoke run's warm start, so `launch.sh --smoke` and the demo share it
    g = parser.add_argument_group("model and warm-up (erc_verl/rehearsal/smoke.py's ModelSpec)")
    g.add_argument(
        "--max-operand", type=int, default=spec.max_operand, help="addition operands are drawn from 0..MAX_OPERAND"
    )
    g.add_argument("--hidden-size", type=int, default=spec.hidden_size, help="tiny Qwen2 hidden size")
    g.add_argument("--layers", type=int, default=spec.layers, help="tiny Qwen2 decoder layers")
    g.add_argument("--heads", type=int, default=spec.heads, help="attention heads (HEADS//2 key/value heads)")
    g.add_argument(
        "--sft-steps",
        type=int,
        default=spec.sft_steps,
        help="supervised warm-up steps (rewards must vary within a group, or dynamic sampling cannot fill a batch)",
    )
    g.add_argument("--sft-batch-size", type=int, default=spec.sft_batch_size, help="warm-up batch size")
    g.add_argument("--sft-lr", type=float, default=spec.sft_lr, help="warm-up AdamW learning rate")

    g = parser.add_argument_group("RL (verl overrides)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per training step (data.train_batch_size)")
    g.add_argument(
        "--responses-per-prompt", type=int, default=4, help="responses per prompt, the GRPO group (rollout.n)"
    )
    g.add_argument(
        "--updates-per-batch",
        type=int,
        default=4,
        help="optimizer steps (mini-batches) per training step; all but the first are off-policy "
        "(actor.ppo_mini_batch_size = PROMPTS_PER_STEP / UPDATES_PER_BATCH)",
    )
    g.add_argument(
        "--micro-batch-size",
        type=int,
        default=8,
        help="sequences per forward/backward micro-batch (actor.ppo_micro_batch_size_per_gpu, "
        "rollout.log_prob_micro_batch_size_per_gpu; actor.use_dynamic_bsz=false)",
    )
    g.add_argument("--lr", type=float, default=2e-3, help="actor AdamW learning rate (actor.optim.lr)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument(
        "--max-new-tokens", type=int, default=8, help="maximum response length in tokens (rollout.response_length)"
    )


def main(args) -> int:
    t_start = time.time()
    modes = validate(args)  # raises UserError before anything is created
    out = Path(args.out).resolve()

    def log(msg: str) -> None:
        print(msg, flush=True)

    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    # Every demo writes a new <out>/<time>/ (nothing of an earlier one is touched: verl would
    # resume a run folder it finds); <out>/latest points at the newest, <out>/.cache is shared.
    from .run_folder import new_run_dir, point_latest

    base = out
    out = new_run_dir(base)
    spec = model_spec(args)
    log(
        f"[demo] warm-up: tiny Qwen2 (hidden {spec.hidden_size}, {spec.layers} layers) + Qwen2Tokenizer, "
        f"{spec.sft_steps} SFT steps on a+b (cached in {base / '.cache'})"
    )
    t0 = time.time()
    model_dir, _ = smoke.prepare_assets(base / ".cache", spec, log=log)
    info = json.loads((model_dir / "erc_verl_smoke.json").read_text())
    warm = f"final SFT loss {info['sft_final_loss']:.3f}" if info.get("sft_final_loss") is not None else "no SFT"
    log(f"[demo] warm start ready in {time.time() - t0:.0f}s: {model_dir} ({warm})")

    runs = {}
    for mode in modes:
        runs[mode] = run_mode(args, mode, out, spec, log)
        if runs[mode]["rc"] != 0:
            log(f"[demo] {mode}: main_ppo failed; the end of {runs[mode]['log_path']}:")
            log(_log_tail(runs[mode]["log_path"]))
            break
    ran = [m for m in modes if m in runs]

    checks = self_checks(args, ran, runs)
    if not args.no_plot:
        plot(out / "demo.png", ran, runs)
    total = time.time() - t_start
    text = write_summary(out / "summary.md", args, ran, runs, checks, warm, total)
    (out / "checks.json").write_text(json.dumps(checks, indent=2))
    point_latest(out)
    log("")
    log(text)
    if not args.no_plot:
        log(f"[demo] figure:  {out / 'demo.png'}")
    log(f"[demo] summary: {out / 'summary.md'}")
    failed = [c["name"] for c in checks if c["gating"] and not c["ok"]]
    log(f"[demo] self-checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    if len(ran) < len(modes) or any(runs[m]["rc"] != 0 for m in ran):
        log(
            f"[demo] not run: {', '.join(m for m in modes if m not in ran) or 'none'}; "
            "a main_ppo run failed (see above)"
        )
        return 1  # a run that did not finish is an error with or without --strict
    return 1 if failed and args.strict else 0


def _log_tail(path: Path, lines: int = 30) -> str:
    """The end of a main_ppo log, without Ray's and verl's warning noise."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [line for line in text if "Warning" not in line and "WARNING" not in line]
    return "\n".join(keep[-lines:])
