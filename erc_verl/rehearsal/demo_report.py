"""The demo's figure (`demo.png`) and summary (`summary.md`), from the runs and the self-checks."""

from __future__ import annotations

from pathlib import Path

from .demo_checks import _mean, _window
from .demo_runs import ERC_MODES, MODES, training_rows

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
    for ax, (key, title) in zip(axes.flat, PLOTS, strict=True):
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
    head = (
        f"| run | recipe | clip low/high | reward first {k} steps | reward last {k} steps | entropy first -> last "
        "| mean ERC keep frac | min ERC keep frac | max grad_norm "
        "| out-of-band tokens with gradient (gate audit) | wall s |"
    )
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
            f"| {_mean(keep):.3f} | {(f'{min(keep):.3f}' if keep else 'n/a')} "
            f"| {(f'{max(grad):.3f}' if grad else 'n/a')} "
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
        f"{args.temperature}, {args.updates_per_batch} mini-batches of {mini * args.responses_per_prompt} "
        f"sequences per step (all but the first off-policy), lr {args.lr}, seed {args.seed}, "
        f"ERC band ({args.band[0]}, {args.band[1]}). "
        "Every number below is read from verl's file log (`logs/metrics-*.jsonl` in each run folder), except the "
        "gate audit's token counts (`gate_audit.ndjson`, written by the spy in verl's actor worker). Baselines run "
        "with `entropy_ratio_monitor` on: their keep fraction is what ERC *would* keep; their gradient is untouched.",
        "",
        "This demo shows the wiring (verl's trainer, the entropy feed, the gate, the metrics), not what ERC does "
        "to training: `docs/erc-at-small-scale.md` shows the dynamics.",
        "",
        summary_table(args, modes, runs),
        "",
        "## Self-checks",
        "",
    ]
    for c in checks:
        tag = ("PASS" if c["ok"] else "FAIL") if c["gating"] else ("ok" if c["ok"] else "note")
        text.append(f"- **{tag}** `{c['name']}`: {c['detail']}")
    text += [
        "",
        "Run folders: " + ", ".join(f"`{runs[m]['plan'].run_dir}`" for m in modes) + ".",
        "",
        f"Total wall time {total_s:.0f} s.",
        "",
    ]
    path.write_text("\n".join(text))
    return "\n".join(text)
