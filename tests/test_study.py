"""The small-scale ERC dynamics study (benchmarks/erc_dynamics_cpu.py): it runs, and its invariants hold.

The slow test runs the study's --quick mode (2 seeds, 3 steps, the base setting, every variant)
through verl's engine TrainingWorker and checks what must be true whatever the outcome: the
random-drop control's keep rate tracks its dapo_erc run, no out-of-band token gets gradient
under ERC (the gate audit's d pg_loss / d log_prob), in-band tokens do, and the report is
written. It never asserts which variant trains better.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "erc_dynamics_cpu.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import erc_dynamics_cpu as study  # noqa: E402
from dynamics import report  # noqa: E402

VARIANTS = {"vanilla", "dapo_erc", "random_drop", "gppo", "gppo_erc"}


def _record(variant, keep, control_keep=None, audit=None, seed=0):
    steps = len(keep)
    series = {
        "reward": [0.5] * steps,
        "valid": [1.0] * steps,
        "perfect": [0.0] * steps,
        "entropy": [1.0] * steps,
        "keep": keep,
        "keep_mb": [[k] for k in keep],
        "control_keep": control_keep or [],
        "control_keep_mb": [[k] for k in control_keep or []],
        "ppo_kl": [0.0] * steps,
        "clipfrac": [0.0] * steps,
        "clipfrac_lower": [0.0] * steps,
        "grad_norm": [[1.0]] * steps,
    }
    rec = {"setting": "base", "seed": seed, "variant": variant, "steps": steps, "series": series}
    if audit is not None:
        rec["audit"] = audit
    return rec


def _audit(with_grad):
    return {
        "calls": 4,
        "checked": 4,
        "unchecked": 0,
        "out_of_band": 10,
        "out_of_band_with_grad": with_grad,
        "in_band": 20,
        "in_band_with_grad": 20,
        "max_abs_grad_out_of_band": 0.0,
    }


def test_invariants_catch_a_mismatched_control_and_a_leaking_gate():
    keep = [1.0, 0.8, 0.6]
    good = [
        _record("dapo_erc", keep, audit=_audit(0)),
        _record("random_drop", [0.5] * 3, control_keep=[1.0, 0.81, 0.6]),
    ]
    inv = report.invariants(good)
    assert inv["control_keep_ok"] and inv["gate_ok"]

    off = [good[0], _record("random_drop", [0.5] * 3, control_keep=[1.0, 0.8, 0.5])]  # one step 0.1 away
    assert not report.invariants(off)["control_keep_ok"]
    leak = [_record("dapo_erc", keep, audit=_audit(1)), good[1]]
    assert not report.invariants(leak)["gate_ok"]
    assert not report.invariants([good[0]])["control_keep_ok"]  # no control at all is not a pass


def test_run_stats_reads_the_series():
    rec = _record("vanilla", [1.0, 0.5, 0.5, 0.5])
    rec["series"]["entropy"] = [1.0, 0.4, 0.6, 0.5]
    rec["series"]["grad_norm"] = [[1.0, 3.0]] + [[1.0]] * 3
    st = report.run_stats(rec)
    assert st["max_entropy_jump"] == pytest.approx(0.6)  # 1.0 -> 0.4
    assert st["final_entropy"] == pytest.approx(0.5)  # mean of the last 3 steps
    assert st["grad_norm_max"] == 3.0
    assert st["cut_frac"] == pytest.approx(1 - 0.625)


@pytest.mark.slow
def test_quick_study_runs_and_its_invariants_hold(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out), "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "invariants: control_keep_ok=True gate_ok=True"

    summary = json.loads((out / "erc_dynamics_cpu.json").read_text())
    records = [json.loads(line) for line in (out / "erc_dynamics_cpu.jsonl").read_text().splitlines()]
    assert {(r["variant"], r["seed"]) for r in records} == {(v, s) for v in VARIANTS for s in (0, 1)}
    for r in records:
        s = r["series"]
        assert len(s["reward"]) == len(s["entropy"]) == len(s["grad_norm"]) == summary["steps"] == 3
        assert all(0.0 <= x <= 1.0 for x in s["reward"] + s["valid"] + s["keep"])
        assert all(math.isfinite(g) for step in s["grad_norm"] for g in step)
        assert all(len(step) == 8 for step in s["grad_norm"])  # 8 mini-batches per rollout batch

    inv = summary["invariants"]
    # the control tracks ERC's keep fraction step by step, and it really drops tokens
    assert len(inv["control_keep"]) == 2
    for pair in inv["control_keep"]:
        assert pair["max_step_diff"] <= report.KEEP_TOLERANCE_STEP
        assert pair["run_diff"] <= report.KEEP_TOLERANCE_RUN
    control_cut = [st["control_cut_frac"] for st in summary["stats"] if st["variant"] == "random_drop"]
    assert all(c > 0.01 for c in control_cut)
    # the gate: every ERC loss call audited, out-of-band tokens exist and get no gradient, in-band ones do
    audits = inv["gate_audit"]
    assert {(a["variant"], a["seed"]) for a in audits} == {(v, s) for v in ("dapo_erc", "gppo_erc") for s in (0, 1)}
    for a in audits:
        assert a["checked"] == a["calls"] == 3 * 8
        assert a["out_of_band"] > 0 and a["out_of_band_with_grad"] == 0 and a["max_abs_grad_out_of_band"] == 0.0
        assert a["in_band_with_grad"] > 0
    # the report
    md = (out / "erc_dynamics_cpu.md").read_text()
    assert "## Setting `base`" in md and "mean ± std" in md
    assert (out / "erc_dynamics_cpu_base.png").stat().st_size > 1000
    assert "10 run(s) on the 2-core CPU machine, 1 process(es) x 2 torch thread(s)" in md
    # Rebuilt from the records by another invocation: the header still names how the runs were made.
    again = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--report-only",
            "--jobs",
            "3",
            "--threads",
            "5",
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rebuilt = (out / "erc_dynamics_cpu.md").read_text()
    assert "1 process(es) x 2 torch thread(s)" in rebuilt and "x 5 torch" not in rebuilt


def test_the_report_names_each_invocation_from_its_records():
    first = dict(_record("vanilla", [0.5]), wall_s=60.0)
    first["run"] = dict(
        invocation="A", machine="box", threads=1, jobs=2, python="3.11", finished="2026-12-01 10:00 UTC"
    )
    second = dict(_record("dapo_erc", [0.5]), wall_s=120.0)
    second["run"] = dict(
        invocation="B", machine="box", threads=2, jobs=1, python="3.11", finished="2026-12-02 09:00 UTC"
    )
    legacy = dict(_record("gppo", [0.5]), wall_s=30.0)
    line = study.provenance([first, second, legacy])
    assert "1 run(s) on box, 2 process(es) x 1 torch thread(s)" in line and "1.0 min" in line
    assert "1 process(es) x 2 torch thread(s)" in line and "finished 2026-12-02 09:00 UTC" in line
    assert "1 run(s) without a recorded machine or invocation (0.5 min" in line


def test_stale_rollouts_come_from_the_weights_k_updates_back(monkeypatch):
    """`stale` = k: generation gets the weights of k optimizer steps ago (the initial ones before
    that), while the worker keeps training on its current weights."""
    import types

    import torch
    from dynamics import loop

    state = {"w": 0.0}

    class Model:
        def load_state_dict(self, weights, strict=False):
            self.loaded = float(weights["w"])
            return [], []

    model = Model()

    def optimizer_step():
        state["w"] += 1.0  # each update moves the live weight by one

    fake_tw = types.SimpleNamespace(
        get_params=lambda worker: {"w": torch.tensor(state["w"])}, rollout_model=lambda worker: model
    )
    monkeypatch.setattr(loop, "_tw", lambda: fake_tw)
    worker = types.SimpleNamespace(engine=types.SimpleNamespace(optimizer_step=optimizer_step))
    history = loop._weight_history(worker, 2)
    seen = []
    for _ in range(3):  # 3 steps of 4 updates each
        sampler, lag = loop._stale_model(worker, history)
        seen.append((sampler.loaded, lag, state["w"]))
        for _ in range(4):
            worker.engine.optimizer_step()
    assert seen == [(0.0, 0, 0.0), (2.0, 2, 4.0), (6.0, 2, 8.0)]


def test_staleness_table_puts_each_k_beside_k0():
    fine, collapsed = _record("dapo_erc", [0.5] * 3), _record("dapo_erc", [0.5] * 3, seed=1)
    fine["series"]["reward"] = [1.0] * 3
    collapsed["series"]["reward"] = [0.5, 0.3, 0.1]
    table = report.staleness_table([(0, "base", [fine]), (8, "stale8", [fine, collapsed])], ["dapo_erc"])
    rows = [line for line in table.splitlines() if line.startswith("| dapo_erc")]
    assert rows[0].startswith("| dapo_erc | 0 (`base`) | 1 | 0 | 1.000 |")
    assert rows[1].startswith("| dapo_erc | 8 (`stale8`) | 2 | 1 | 0.650 |")  # mean final reward (1.0 + 0.3) / 2
