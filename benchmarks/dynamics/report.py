"""Per-run statistics, the invariants, the Markdown tables and the figures of the study."""

from __future__ import annotations

import math

import numpy as np

FINAL_WINDOW = 3  # "final" = mean over the last 3 steps (one step's 64 samples are noisy)
# Invariant: the control's keep fraction matches the ERC run's, step by step (mean over the
# step's mini-batches). Binomial noise on one step's ~2,000 tokens is about 0.01.
KEEP_TOLERANCE_STEP = 0.05
KEEP_TOLERANCE_RUN = 0.02

COLUMNS = (
    ("final_reward", "final reward", "{:.3f}"),
    ("final_valid", "valid frac", "{:.3f}"),
    ("final_entropy", "final entropy", "{:.3f}"),
    ("max_entropy_jump", "max entropy jump", "{:.3f}"),
    ("grad_norm_max", "grad-norm max", "{:.2f}"),
    ("grad_norm_p95", "grad-norm p95", "{:.2f}"),
    ("cut_frac", "ERC cut frac", "{:.3f}"),
    ("ppo_kl_mean", "mean ppo_kl", "{:.4f}"),
)


def run_stats(record: dict) -> dict:
    s = record["series"]
    w = min(FINAL_WINDOW, len(s["reward"]))
    norms = [g for step in s["grad_norm"] for g in step]
    ent = np.array(s["entropy"])
    return {
        "final_reward": float(np.mean(s["reward"][-w:])),
        "final_valid": float(np.mean(s["valid"][-w:])),
        "final_entropy": float(np.mean(s["entropy"][-w:])),
        "max_entropy_jump": float(np.max(np.abs(np.diff(ent)))) if len(ent) > 1 else 0.0,
        "grad_norm_max": float(np.max(norms)),
        "grad_norm_p95": float(np.percentile(norms, 95)),
        "cut_frac": 1.0 - float(np.mean(s["keep"])),
        "ppo_kl_mean": float(np.mean(s["ppo_kl"])),
        "clipfrac_mean": float(np.mean(s["clipfrac"])),
        "control_cut_frac": (1.0 - float(np.mean(s["control_keep"]))) if s.get("control_keep") else None,
    }


def invariants(records: list[dict]) -> dict:
    """The control's keep rate against its ERC run, and the ERC gate audit, over all records."""
    by_key = {(r["setting"], r["seed"], r["variant"]): r for r in records}
    keep_pairs = []
    for (setting, seed, variant), r in by_key.items():
        if variant != "random_drop":
            continue
        erc = by_key.get((setting, seed, "dapo_erc"))
        if erc is None:
            continue
        ctl, ref = np.array(r["series"]["control_keep"]), np.array(erc["series"]["keep"])
        keep_pairs.append(
            {
                "setting": setting,
                "seed": seed,
                "max_step_diff": float(np.max(np.abs(ctl - ref))),
                "run_diff": float(abs(ctl.mean() - ref.mean())),
            }
        )
    audits = [
        dict(r["audit"], setting=r["setting"], seed=r["seed"], variant=r["variant"]) for r in records if r.get("audit")
    ]
    keep_ok = bool(keep_pairs) and all(
        p["max_step_diff"] <= KEEP_TOLERANCE_STEP and p["run_diff"] <= KEEP_TOLERANCE_RUN for p in keep_pairs
    )
    gate_ok = bool(audits) and all(
        a["checked"] == a["calls"] and a["checked"] > 0 and a["out_of_band_with_grad"] == 0 for a in audits
    )
    return {
        "control_keep": keep_pairs,
        "control_keep_ok": keep_ok,
        "tolerance_step": KEEP_TOLERANCE_STEP,
        "tolerance_run": KEEP_TOLERANCE_RUN,
        "gate_audit": audits,
        "gate_ok": gate_ok,
        "out_of_band_tokens": sum(a["out_of_band"] for a in audits),
        "out_of_band_with_grad": sum(a["out_of_band_with_grad"] for a in audits),
    }


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def setting_table(records: list[dict], variants: list[str]) -> str:
    head = "| variant | seed | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for variant in variants:
        rows = sorted((r for r in records if r["variant"] == variant), key=lambda r: r["seed"])
        if not rows:
            continue
        stats = [run_stats(r) for r in rows]
        for r, st in zip(rows, stats, strict=False):
            lines.append(
                f"| {variant} | {r['seed']} | " + " | ".join(fmt.format(st[k]) for k, _, fmt in COLUMNS) + " |"
            )
        cells = []
        for k, _, fmt in COLUMNS:
            m, s = _mean_std([st[k] for st in stats])
            cells.append(f"**{fmt.format(m)} ± {fmt.format(s)}**")
        lines.append(f"| **{variant}** | **mean ± std** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLOURS = {
    "vanilla": "#1f77b4",
    "dapo_erc": "#d62728",
    "random_drop": "#7f7f7f",
    "gppo": "#2ca02c",
    "gppo_erc": "#9467bd",
}


def setting_figure(records: list[dict], variants: list[str], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("entropy", "mean token entropy (rollout)", lambda s: s["entropy"]),
        ("reward", "reward (fraction of good transitions)", lambda s: s["reward"]),
        ("grad_norm", "grad norm (max over the step's mini-batches)", lambda s: [max(g) for g in s["grad_norm"]]),
        ("keep", "in-band token fraction (ERC: kept; dashed: control's random keep)", lambda s: s["keep"]),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), dpi=72, sharex=True)
    for ax, (key, label, get) in zip(axes.flat, panels, strict=False):
        for variant in variants:
            rows = [r for r in records if r["variant"] == variant]
            if not rows:
                continue
            ys = np.array([get(r["series"]) for r in rows], dtype=float)
            x = np.arange(ys.shape[1])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(x, mean, color=COLOURS.get(variant), label=f"{variant} (n={len(rows)})", lw=1.5)
            ax.fill_between(x, mean - std, mean + std, color=COLOURS.get(variant), alpha=0.15, lw=0)
            if key == "keep" and variant == "random_drop":
                ck = np.array([r["series"]["control_keep"] for r in rows], dtype=float).mean(0)
                ax.plot(x, ck, color=COLOURS[variant], ls="--", lw=1.2)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(title + " (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def fmt_num(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


COLLAPSED = 0.9  # a final reward under this counts as collapsed
STALE_COLUMNS = (
    ("final_reward", "final reward", "{:.3f}"),
    ("max_entropy_jump", "max entropy jump", "{:.3f}"),
    ("grad_norm_p95", "grad-norm p95", "{:.2f}"),
    ("cut_frac", "ERC cut frac", "{:.3f}"),
    ("ppo_kl_mean", "mean ppo_kl", "{:.4f}"),
)


def staleness_table(rows: list[tuple[int, str, list[dict]]], variants: list[str]) -> str:
    """One row per (variant, k): means over seeds and the collapsed seeds, k = rollout staleness.

    rows: (k, setting name, that setting's records), in the order to show.
    """
    head = "| variant | k (setting) | seeds | collapsed | " + " | ".join(c[1] for c in STALE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(STALE_COLUMNS) + 4)]
    for variant in variants:
        for k, name, recs in rows:
            stats = [run_stats(r) for r in recs if r["variant"] == variant]
            if not stats:
                continue
            collapsed = sum(st["final_reward"] < COLLAPSED for st in stats)
            cells = [fmt.format(float(np.mean([st[key] for st in stats]))) for key, _, fmt in STALE_COLUMNS]
            lines.append(f"| {variant} | {k} (`{name}`) | {len(stats)} | {collapsed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
