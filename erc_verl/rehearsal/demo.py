"""`erc-verl demo`: ERC end to end on CPU, through verl's own trainer, in a few minutes.

What it does, in order (everything local, nothing downloaded):

1. warm-up: builds the smoke run's tiny Qwen2 and its Qwen2Tokenizer (byte-level, ChatML,
   `</think>`) and warms it up with a short supervised pass on small sums written as
   `</think>ANSWER<|im_end|>`, so rewards vary within a group (erc_verl/rehearsal/smoke.py,
   `prepare_assets`; cached under OUT/.cache);
2. for each loss mode (default: `vanilla`, the DAPO baseline, PPO-clip 0.2/0.28, dual-clip 10,
   with `entropy_ratio_monitor: true`; and `dapo_erc`, the same plus the band (0.95, 1.05)),
   from the same warm start and seed, runs the mode's recipe (recipes/dapo_qwen1.5b.yaml,
   recipes/dapo_erc_qwen1.5b.yaml) through `python -m verl.trainer.main_ppo` on CPU with the
   `hf` rollout backend: the smoke run's CPU overrides (`build_smoke`) plus the demo's batch
   shape, step count and seed. One run after the other (two at once only share 2 cores);
3. reads verl's file-logger JSONL of both runs and the gate audit, and writes `demo.png`
   (reward, entropy, ERC keep fraction, grad norm per step), `summary.md` and `checks.json`.

The ERC gate check is a real gradient check (erc_verl/rehearsal/gate_audit.py): the demo adds
`erc_verl.rehearsal.gate_audit` to `VERL_USE_EXTERNAL_MODULES` in the Ray runtime environment, so
verl imports it in every worker; there it wraps the registered losses and, on every
micro-batch of the update, takes d pg_loss / d log_prob with `torch.autograd.grad` and counts
response tokens whose entropy ratio is out of band yet got a non-zero gradient. The check
passes when that count is 0 for the ERC run while the baseline's is > 0 (the spy does see
gradient where there is some).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from erc_verl.repro.errors import UserError

# loss mode -> (recipe, clip low, clip high). Every recipe: dual-clip 10, token-mean, GRPO,
# DAPO dynamic sampling on `acc`; baselines with entropy_ratio_monitor on.
MODES = {
    "vanilla": ("dapo_qwen1.5b", 0.2, 0.28),
    "dapo_erc": ("dapo_erc_qwen1.5b", 0.2, 0.28),
    "gppo": ("gppo_qwen1.5b", 0.2, 0.2),
    "gppo_erc": ("gppo_erc_qwen1.5b", 0.2, 0.2),
}
ERC_MODES = ("dapo_erc", "gppo_erc")
GATE_AUDIT_MODULE = "erc_verl.rehearsal.gate_audit"
GATE_AUDIT_ENV = "ERC_VERL_GATE_AUDIT"  # = gate_audit.ENV (not imported here: that module hooks verl)
RUNTIME_ENV = "ray_kwargs.ray_init.runtime_env.env_vars"
# Keys every run's training steps must carry in verl's file log.
REQUIRED_KEYS = (
    "critic/score/mean",
    "actor/entropy",
    "actor/erc_keep_frac",
    "actor/grad_norm",
    "actor/pg_loss",
    "actor/entropy_ratio_mean",
    "timing_s/gen",
    "timing_s/update_actor",
)


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Warm up a tiny Qwen2 on addition, then train it with GRPO through verl's own trainer "
        "(python -m verl.trainer.main_ppo, CPU rollout backend `hf`) once per loss mode from the same warm "
        "start and seed, and compare them from verl's file logs: writes demo.png, summary.md, checks.json "
        "and one run folder per mode (verl's file log, main_ppo.log, the gate audit) under --out."
    )
    g = parser.add_argument_group("run")
    g.add_argument("--out", default="runs/demo", help="output folder (replaced run folders: verl would resume them)")
    g.add_argument("--steps", type=int, default=20, help="training steps per loss mode")
    g.add_argument("--seed", type=int, default=0, help="seed of the warm-up, the data order and the rollout sampling")
    g.add_argument(
        "--loss-modes",
        default="vanilla,dapo_erc",
        help="comma-separated loss modes, each run through its recipe: "
        + ", ".join(f"{m} ({r}.yaml, clip {lo}/{hi})" for m, (r, lo, hi) in MODES.items())
        + "; dual-clip 10 for all; baselines log the ERC monitor",
    )
    g.add_argument("--band", type=float, nargs=2, default=(0.95, 1.05), metavar=("LOW", "HIGH"),
                   help="ERC entropy-ratio band (low, high); also the band the baselines' monitor and the gate audit use")
    g.add_argument("--threads", type=int, default=2, help="CPU threads per process (torch in the warm-up, OMP_NUM_THREADS in verl's workers)")
    g.add_argument("--timeout", type=float, default=900, help="seconds each main_ppo run may take before it is stopped")
    g.add_argument("--strict", action="store_true", help="exit with status 1 if a self-check fails")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG figure")
    g.add_argument("--quiet", action="store_true", help="print only the demo's own lines, not one per training step")

    from .smoke import ModelSpec

    spec = ModelSpec()  # the smoke run's warm start, so `launch.sh --smoke` and the demo share it
    g = parser.add_argument_group("model and warm-up (erc_verl/rehearsal/smoke.py's ModelSpec)")
    g.add_argument("--max-operand", type=int, default=spec.max_operand, help="addition operands are drawn from 0..MAX_OPERAND")
    g.add_argument("--hidden-size", type=int, default=spec.hidden_size, help="tiny Qwen2 hidden size")
    g.add_argument("--layers", type=int, default=spec.layers, help="tiny Qwen2 decoder layers")
    g.add_argument("--heads", type=int, default=spec.heads, help="attention heads (HEADS//2 key/value heads)")
    g.add_argument("--sft-steps", type=int, default=spec.sft_steps,
                   help="supervised warm-up steps (rewards must vary within a group, or dynamic sampling cannot fill a batch)")
    g.add_argument("--sft-batch-size", type=int, default=spec.sft_batch_size, help="warm-up batch size")
    g.add_argument("--sft-lr", type=float, default=spec.sft_lr, help="warm-up AdamW learning rate")

    g = parser.add_argument_group("RL (verl overrides)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="prompts per training step (data.train_batch_size)")
    g.add_argument("--responses-per-prompt", type=int, default=4, help="responses per prompt, the GRPO group (rollout.n)")
    g.add_argument("--updates-per-batch", type=int, default=4,
                   help="optimizer steps (mini-batches) per training step; all but the first are off-policy "
                   "(actor.ppo_mini_batch_size = PROMPTS_PER_STEP / UPDATES_PER_BATCH)")
    g.add_argument("--micro-batch-size", type=int, default=8,
                   help="sequences per forward/backward micro-batch (actor.ppo_micro_batch_size_per_gpu, "
                   "rollout.log_prob_micro_batch_size_per_gpu; actor.use_dynamic_bsz=false)")
    g.add_argument("--lr", type=float, default=2e-3, help="actor AdamW learning rate (actor.optim.lr)")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument("--max-new-tokens", type=int, default=8, help="maximum response length in tokens (rollout.response_length)")


def _fix(flag: str, problem: str, fix: str) -> UserError:
    return UserError(f"{flag}: {problem}; {fix}")


def validate(args) -> list[str]:
    """All argument checks, before anything is created. Returns the loss modes."""
    modes = [m.strip() for m in str(args.loss_modes).split(",") if m.strip()]
    if not modes:
        raise _fix("--loss-modes", "no loss mode given", f"give one or more of {','.join(MODES)}, e.g. --loss-modes vanilla,dapo_erc")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        import difflib

        hint = difflib.get_close_matches(unknown[0], list(MODES), n=1)
        raise _fix("--loss-modes", f"unknown loss mode {unknown[0]!r}",
                   (f"did you mean {hint[0]!r}? " if hint else "") + f"choose from {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise _fix("--loss-modes", "a mode is listed twice", "list each mode once")

    def at_least(flag: str, value, low, why: str = "") -> None:
        if value is None or not value >= low or (isinstance(value, float) and not math.isfinite(value)):
            raise _fix(flag, f"{value} is not allowed{why}", f"give a value >= {low}")

    at_least("--steps", args.steps, 1, " (training steps per run)")
    at_least("--seed", args.seed, 0)
    at_least("--threads", args.threads, 1, " (CPU threads per process)")
    at_least("--prompts-per-step", args.prompts_per_step, 1)
    at_least("--responses-per-prompt", args.responses_per_prompt, 2, " (GRPO compares responses to the same prompt)")
    at_least("--updates-per-batch", args.updates_per_batch, 1)
    at_least("--micro-batch-size", args.micro_batch_size, 1)
    at_least("--max-new-tokens", args.max_new_tokens, 4, " (`</think>`, the digits and the end token must fit)")
    at_least("--max-operand", args.max_operand, 1)
    at_least("--hidden-size", args.hidden_size, 8)
    at_least("--layers", args.layers, 1)
    at_least("--heads", args.heads, 1)
    at_least("--sft-steps", args.sft_steps, 0)
    at_least("--sft-batch-size", args.sft_batch_size, 1)
    for flag, value in (("--lr", args.lr), ("--sft-lr", args.sft_lr), ("--temperature", args.temperature),
                        ("--timeout", args.timeout)):
        if not (value > 0 and math.isfinite(value)):
            raise _fix(flag, f"{value} is not allowed", "give a positive number")
    if args.max_operand > 999:
        raise _fix("--max-operand", f"{args.max_operand} is too large for the prompt and response lengths", "give at most 999")
    if args.hidden_size % args.heads or (args.hidden_size // args.heads) % 2:
        raise _fix("--hidden-size", f"{args.hidden_size} is not HEADS ({args.heads}) x an even head size",
                   "e.g. --hidden-size 64 --heads 4")
    low, high = args.band
    if not 0 < low < 1 < high:
        raise _fix("--band", f"({low}, {high}) is not a band around 1", "give 0 < LOW < 1 < HIGH, e.g. --band 0.95 1.05")
    if args.prompts_per_step % args.updates_per_batch:
        raise _fix("--updates-per-batch", f"{args.updates_per_batch} does not divide --prompts-per-step {args.prompts_per_step}",
                   "verl splits a step's prompts into equal mini-batches; pick a divisor")
    mini = args.prompts_per_step // args.updates_per_batch * args.responses_per_prompt
    if mini % args.micro_batch_size:
        raise _fix("--micro-batch-size", f"{args.micro_batch_size} does not divide the mini-batch of {mini} sequences "
                   f"(PROMPTS_PER_STEP / UPDATES_PER_BATCH x RESPONSES_PER_PROMPT)", "pick a divisor")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _fix("--out", f"{out} exists and is not a folder", "name a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise _fix("--out", f"cannot write under {probe}", "name a writable folder")
    return modes


# ----------------------------------------------------------------------------------------
# the runs
# ----------------------------------------------------------------------------------------


def model_spec(args):
    from .smoke import ModelSpec

    return ModelSpec(
        hidden_size=args.hidden_size, layers=args.layers, heads=args.heads, kv_heads=max(1, args.heads // 2),
        max_operand=args.max_operand, sft_steps=args.sft_steps, sft_batch_size=args.sft_batch_size,
        sft_lr=args.sft_lr, seed=args.seed,
    )


def _quote(value) -> str:
    """A Hydra override value as a quoted string (paths, comma lists)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def demo_overrides(args, mode: str, audit_path: Path) -> list[str]:
    """What the demo sets on top of the smoke run's CPU overrides (applied last)."""
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    low, high = args.band
    mini = args.prompts_per_step // args.updates_per_batch
    return [
        f"hydra.run.dir={_quote(Path(audit_path).parent / 'hydra')}",  # not ./outputs/DATE/TIME
        f"data.train_batch_size={args.prompts_per_step}",
        f"data.gen_batch_size={args.prompts_per_step}",
        f"{R}.n={args.responses_per_prompt}",
        f"{R}.temperature={args.temperature}",
        f"{R}.response_length={args.max_new_tokens}",
        f"data.max_response_length={args.max_new_tokens}",
        f"{A}.ppo_mini_batch_size={mini}",
        f"{A}.use_dynamic_bsz=false",
        f"{A}.ppo_micro_batch_size_per_gpu={args.micro_batch_size}",
        f"{R}.log_prob_micro_batch_size_per_gpu={args.micro_batch_size}",
        f"{A}.optim.lr={args.lr}",
        f"{A}.policy_loss.entropy_ratio_low={low}",
        f"{A}.policy_loss.entropy_ratio_high={high}",
        f"data.seed={args.seed}",
        f"{R}.seed={args.seed}",
        f"{A}.fsdp_config.seed={args.seed}",
        "trainer.val_before_train=false",
        f"trainer.test_freq={args.steps}",
        "trainer.save_freq=-1",
        f"{RUNTIME_ENV}.VERL_USE_EXTERNAL_MODULES={_quote('erc_verl,' + GATE_AUDIT_MODULE)}",
        f"++{RUNTIME_ENV}.{GATE_AUDIT_ENV}={_quote(audit_path)}",
        f"++{RUNTIME_ENV}.OMP_NUM_THREADS={_quote(args.threads)}",
        # Ray takes only strings here; an unquoted `false` would reach it as a bool.
        f"++{RUNTIME_ENV}.TOKENIZERS_PARALLELISM={_quote('false')}",
    ]


_CONSOLE_STEP = re.compile(r"(?:^|\s)(step:\d+ - .*)$")


def run_mode(args, mode: str, out: Path, spec, log) -> dict:
    """One main_ppo run of the mode's recipe; returns its plan, exit code, file log rows, audit."""
    from . import smoke

    recipe = MODES[mode][0]
    # build_smoke replaces OUT/RECIPE (verl resumes from a checkpoint it finds there).
    audit_path = (out / recipe / "gate_audit.ndjson").resolve()  # = plan.run_dir below
    plan = smoke.build_smoke(recipe, out, demo_overrides(args, mode, audit_path), steps=args.steps, spec=spec,
                             log=lambda *a, **k: None)
    audit_path.unlink(missing_ok=True)
    (plan.run_dir / "overrides.txt").write_text(plan.describe() + "\n")
    log_path = plan.run_dir / "main_ppo.log"
    env = dict(plan.env, OMP_NUM_THREADS=str(args.threads))
    log(f"[demo] {mode}: {recipe}.yaml through verl.trainer.main_ppo, {args.steps} steps "
        f"(command and overrides: {plan.run_dir / 'overrides.txt'}; output: {log_path})")
    t0 = time.time()

    def on_line(line: str) -> None:
        # verl's console logger, printed by the TaskRunner actor: "(TaskRunnerV1 pid=..) step:N - key:value - ..."
        match = None if args.quiet else _CONSOLE_STEP.search(line)
        if match is None:
            return
        fields = dict(f.split(":", 1) for f in match.group(1).strip().split(" - ") if ":" in f)
        if "critic/score/mean" not in fields:
            return

        def num(key):
            try:
                return f"{float(fields[key]):.3f}"
            except (KeyError, ValueError):
                return "n/a"

        log(f"[{mode}] step {fields['step']}/{args.steps}  reward {num('critic/score/mean')}  "
            f"entropy {num('actor/entropy')}  keep {num('actor/erc_keep_frac')}  "
            f"grad_norm {num('actor/grad_norm')}  ({time.time() - t0:.0f}s)")

    rc = smoke.run_main_ppo(plan, timeout=args.timeout, capture=log_path, on_line=on_line, env=env)
    if rc is None:
        log(f"[demo] {mode}: main_ppo still running after --timeout {args.timeout:g}s; stopped it")
    wall = time.time() - t0
    steps = smoke.read_file_log(plan.file_log) if plan.file_log.exists() else {}
    from .gate_audit import read_audit

    audit = read_audit(audit_path)
    status = "ok" if rc == 0 else ("timed out" if rc is None else f"exit {rc}")
    log(f"[demo] {mode}: main_ppo {status} after {wall:.0f}s; file log {plan.file_log}")
    return {"mode": mode, "recipe": recipe, "plan": plan, "rc": rc, "wall_s": wall, "steps": steps,
            "audit": audit.get(mode, {}), "audit_path": audit_path, "log_path": log_path}


def training_rows(run: dict) -> list[tuple[int, dict]]:
    """(step, metrics) of the training steps in verl's file log (validation-only rows dropped)."""
    return sorted((s, m) for s, m in run["steps"].items() if "critic/score/mean" in m)


# ----------------------------------------------------------------------------------------
# checks, figure, summary
# ----------------------------------------------------------------------------------------


def _mean(xs):
    xs = [x for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _window(n: int) -> int:
    return max(1, min(5, n // 3))


def self_checks(args, modes, runs) -> list[dict]:
    """Each check: name, ok, gating (False: reported only, never fails --strict), detail."""
    checks = []
    low, high = args.band
    for mode in modes:
        run = runs[mode]
        rows = training_rows(run)
        missing = sorted({k for _, m in rows for k in REQUIRED_KEYS if k not in m})
        ok = run["rc"] == 0 and len(rows) == args.steps and not missing
        checks.append({
            "name": f"run_complete[{mode}]", "ok": ok, "gating": True,
            "detail": (f"main_ppo {'exit 0' if run['rc'] == 0 else 'timed out' if run['rc'] is None else 'exit ' + str(run['rc'])}"
                       f" in {run['wall_s']:.0f}s; {len(rows)} of {args.steps} training steps in verl's file log"
                       + (f"; missing keys: {', '.join(missing)}" if missing
                          else "; every step has " + ", ".join(REQUIRED_KEYS[:4]) if rows else "")
                       + f" (log: {run['log_path']})"),
        })
    # The gate: zero gradient out of band for ERC, measured in the worker.
    for mode in modes:
        a, rows = runs[mode]["audit"], training_rows(runs[mode])
        keep = [m.get("actor/erc_keep_frac") for _, m in rows]
        keep = [k for k in keep if isinstance(k, (int, float))]
        counts = (f"{a.get('checked', 0)} loss calls checked in worker pid(s) {a.get('pids', [])} "
                  f"({a.get('unchecked', 0)} unchecked{': ' + '; '.join(a.get('why_unchecked', [])) if a.get('unchecked') else ''}); "
                  f"{a.get('out_of_band', 0)} response tokens had entropy ratio outside ({low}, {high}), "
                  f"{a.get('out_of_band_with_grad', 0)} of them got a non-zero d pg_loss/d log_prob "
                  f"(max |grad| {a.get('max_abs_grad_out_of_band', 0.0):.3g}); "
                  f"{a.get('in_band_with_grad', 0)} of {a.get('in_band', 0)} in-band tokens got gradient; "
                  f"lowest logged actor/erc_keep_frac {min(keep) if keep else float('nan'):.3f}")
        if mode in ERC_MODES:
            ok = (a.get("checked", 0) > 0 and a.get("unchecked", 0) == 0 and a.get("out_of_band", 0) > 0
                  and a.get("out_of_band_with_grad", 1) == 0 and a.get("in_band_with_grad", 0) > 0)
            checks.append({"name": f"erc_gate[{mode}]", "ok": ok, "gating": True, "detail": counts})
        else:
            # The contrast: the same spy sees gradient on out-of-band tokens when nothing gates them.
            ok = a.get("checked", 0) > 0 and a.get("out_of_band_with_grad", 0) > 0
            checks.append({"name": f"gate_contrast[{mode}]", "ok": ok, "gating": True, "detail": counts})
    # Weak: a 20-step run of a tiny model; reported, never fatal.
    for mode in modes:
        rows = training_rows(runs[mode])
        if len(rows) < 2:
            continue
        k = _window(len(rows))
        scores = [m["critic/score/mean"] for _, m in rows]
        first, last = _mean(scores[:k]), _mean(scores[-k:])
        checks.append({
            "name": f"reward_trend[{mode}]", "ok": last > first, "gating": False,
            "detail": f"critic/score/mean over the first {k} steps {first:.3f} -> last {k} steps {last:.3f} (reported only)",
        })
    return checks


PLOTS = (
    ("critic/score/mean", "reward (critic/score/mean; +1 right, -1 wrong)"),
    ("actor/entropy", "entropy (actor/entropy)"),
    ("actor/erc_keep_frac", "ERC keep fraction (monitor for baselines)"),
    ("actor/grad_norm", "gradient norm (actor/grad_norm)"),
)


def plot(path: Path, modes, runs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, (key, title) in zip(axes.flat, PLOTS):
        for mode in modes:
            rows = training_rows(runs[mode])
            ax.plot([s for s, _ in rows], [m.get(key, float("nan")) for _, m in rows], label=mode, lw=1.4, marker=".")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[1]:
        ax.set_xlabel("training step (verl global step)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=9)
    fig.suptitle("erc-verl demo: tiny Qwen2, GRPO through verl's main_ppo on CPU (from verl's file logs)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def summary_table(args, modes, runs) -> str:
    k = _window(args.steps)
    head = (f"| run | recipe | clip low/high | reward first {k} steps | reward last {k} steps | entropy first -> last "
            "| mean ERC keep frac | min ERC keep frac | max grad_norm | out-of-band tokens with gradient (gate audit) | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in modes:
        run = runs[mode]
        rows = [m for _, m in training_rows(run)]
        a = run["audit"]
        recipe, lo, hi = MODES[mode]

        def col(key, rs=rows):
            return [r.get(key) for r in rs if isinstance(r.get(key), (int, float))]

        ent = col("actor/entropy")
        keep, grad = col("actor/erc_keep_frac"), col("actor/grad_norm")
        lines.append(
            f"| {mode}{' (ERC)' if mode in ERC_MODES else ''} | {recipe} | {lo}/{hi} "
            f"| {_mean(col('critic/score/mean')[:k]):.3f} | {_mean(col('critic/score/mean')[-k:]):.3f} "
            f"| {(f'{ent[0]:.3f} -> {ent[-1]:.3f}' if ent else 'n/a')} "
            f"| {_mean(keep):.3f} | {(f'{min(keep):.3f}' if keep else 'n/a')} | {(f'{max(grad):.3f}' if grad else 'n/a')} "
            f"| {a.get('out_of_band_with_grad', 0)} of {a.get('out_of_band', 0)} | {run['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def write_summary(path: Path, args, modes, runs, checks, warm, total_s) -> str:
    mini = args.prompts_per_step // args.updates_per_batch
    text = [
        "# erc-verl demo summary",
        "",
        f"Tiny Qwen2 (hidden {args.hidden_size}, {args.layers} layers), warmed up with {args.sft_steps} SFT steps on "
        f"a+b (operands 0..{args.max_operand}; {warm}). Each run: its recipe through `python -m verl.trainer.main_ppo` "
        f"on CPU (rollout backend `hf`, FSDP2, V1 trainer, DAPO dynamic sampling on `acc`, the recipes' reward), "
        f"{args.steps} steps of {args.prompts_per_step} prompts x {args.responses_per_prompt} responses at temperature "
        f"{args.temperature}, {args.updates_per_batch} mini-batches of {mini * args.responses_per_prompt} sequences per "
        f"step (all but the first off-policy), lr {args.lr}, seed {args.seed}, ERC band ({args.band[0]}, {args.band[1]}). "
        "Every number below is read from verl's file log (`logs/metrics-*.jsonl` in each run folder), except the "
        "gate audit's token counts (`gate_audit.ndjson`, written by the spy in verl's actor worker). Baselines run "
        "with `entropy_ratio_monitor` on: their keep fraction is what ERC *would* keep; their gradient is untouched.",
        "",
        summary_table(args, modes, runs),
        "",
        "## Self-checks",
        "",
    ]
    for c in checks:
        tag = ("PASS" if c["ok"] else "FAIL") if c["gating"] else ("ok" if c["ok"] else "note")
        text.append(f"- **{tag}** `{c['name']}`: {c['detail']}")
    text += ["", "Run folders: " + ", ".join(f"`{runs[m]['plan'].run_dir}`" for m in modes) + ".",
             "", f"Total wall time {total_s:.0f} s.", ""]
    path.write_text("\n".join(text))
    return "\n".join(text)


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------


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
    from . import smoke

    out.mkdir(parents=True, exist_ok=True)
    for name in ("demo.png", "summary.md", "checks.json"):
        (out / name).unlink(missing_ok=True)  # never leave a previous run's results beside this one's
    spec = model_spec(args)
    log(f"[demo] warm-up: tiny Qwen2 (hidden {spec.hidden_size}, {spec.layers} layers) + Qwen2Tokenizer, "
        f"{spec.sft_steps} SFT steps on a+b (cached in {out / '.cache'})")
    t0 = time.time()
    model_dir, _ = smoke.prepare_assets(out / ".cache", spec, log=log)
    info = json.loads((model_dir / "erc_verl_smoke.json").read_text())
    warm = (f"final SFT loss {info['sft_final_loss']:.3f}" if info.get("sft_final_loss") is not None else "no SFT")
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
    log("")
    log(text)
    if not args.no_plot:
        log(f"[demo] figure:  {out / 'demo.png'}")
    log(f"[demo] summary: {out / 'summary.md'}")
    failed = [c["name"] for c in checks if c["gating"] and not c["ok"]]
    log(f"[demo] self-checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    if len(ran) < len(modes) or any(runs[m]["rc"] != 0 for m in ran):
        log(f"[demo] not run: {', '.join(m for m in modes if m not in ran) or 'none'}; a main_ppo run failed (see above)")
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


def demo_main(args) -> int:
    return main(args)


if __name__ == "__main__":
    from erc_verl.cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
