"""The demo's self-checks, read from the runs' file logs and gate audits.

Gating checks (a run finished with every step and key logged; the ERC gate let no out-of-band
token through while the baseline's did get gradient) fail `--strict`; the reward trend of a
20-step run of a tiny model is reported only.
"""

from __future__ import annotations

import math

from .demo_runs import ERC_MODES, training_rows

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


def _mean(xs):
    xs = [x for x in xs if x is not None and isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _window(n: int) -> int:
    return max(1, min(5, n // 3))


def _status(rc) -> str:
    return "exit 0" if rc == 0 else "timed out" if rc is None else f"exit {rc}"


def self_checks(args, modes, runs) -> list[dict]:
    """Each check: name, ok, gating (False: reported only, never fails --strict), detail."""
    checks = []
    low, high = args.band
    for mode in modes:
        run = runs[mode]
        rows = training_rows(run)
        missing = sorted({k for _, m in rows for k in REQUIRED_KEYS if k not in m})
        ok = run["rc"] == 0 and len(rows) == args.steps and not missing
        checks.append(
            {
                "name": f"run_complete[{mode}]",
                "ok": ok,
                "gating": True,
                "detail": (
                    f"main_ppo {_status(run['rc'])}"
                    f" in {run['wall_s']:.0f}s; {len(rows)} of {args.steps} training steps in verl's file log"
                    + (
                        f"; missing keys: {', '.join(missing)}"
                        if missing
                        else "; every step has " + ", ".join(REQUIRED_KEYS[:4])
                        if rows
                        else ""
                    )
                    + f" (log: {run['log_path']})"
                ),
            }
        )
    # The gate: zero gradient out of band for ERC, measured in the worker.
    for mode in modes:
        a, rows = runs[mode]["audit"], training_rows(runs[mode])
        keep = [m.get("actor/erc_keep_frac") for _, m in rows]
        keep = [k for k in keep if isinstance(k, (int, float))]
        why = ": " + "; ".join(a.get("why_unchecked", [])) if a.get("unchecked") else ""
        counts = (
            f"{a.get('checked', 0)} loss calls checked in worker pid(s) {a.get('pids', [])} "
            f"({a.get('unchecked', 0)} unchecked{why}); "
            f"{a.get('out_of_band', 0)} response tokens had entropy ratio outside ({low}, {high}), "
            f"{a.get('out_of_band_with_grad', 0)} of them got a non-zero d pg_loss/d log_prob "
            f"(max |grad| {a.get('max_abs_grad_out_of_band', 0.0):.3g}); "
            f"{a.get('in_band_with_grad', 0)} of {a.get('in_band', 0)} in-band tokens got gradient; "
            f"lowest logged actor/erc_keep_frac {min(keep) if keep else float('nan'):.3f}"
        )
        if mode in ERC_MODES:
            ok = (
                a.get("checked", 0) > 0
                and a.get("unchecked", 0) == 0
                and a.get("out_of_band", 0) > 0
                and a.get("out_of_band_with_grad", 1) == 0
                and a.get("in_band_with_grad", 0) > 0
            )
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
        checks.append(
            {
                "name": f"reward_trend[{mode}]",
                "ok": last > first,
                "gating": False,
                "detail": f"critic/score/mean over the first {k} steps {first:.3f} -> last {k} steps {last:.3f} "
                "(reported only)",
            }
        )
    return checks
