"""`scripts/launch.sh --smoke`: a recipe end to end through verl's own main_ppo on CPU.

One ERC recipe and one baseline run as they would on a cluster (V1 trainer, dynamic sampling on
`acc`, the paper's reward, validation, checkpoint, file logger), with the CPU overrides of
erc_verl/rehearsal/smoke.py. Everything is asserted from verl's file log and the run folder.
A few minutes each on 2 cores; marked slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from erc_verl.rehearsal.smoke import ROOT, build_smoke, read_file_log, run_main_ppo, smoke_overrides

LAUNCH = ROOT / "scripts" / "launch.sh"

TRAIN_KEYS = (
    "actor/entropy_ratio_mean",
    "critic/score/mean",
    "timing_s/gen",
    "timing_s/update_actor",
    # The recipes' positive-sample NLL (0.1): proves the rewards reach the update through verl's trainer.
    "actor/positive_nll",
)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke")  # shared: the tiny model is built once


def test_launch_help_is_a_usage_text():
    out = subprocess.run(["bash", str(LAUNCH), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("Usage:")
    assert "--smoke" in out.stdout and "WANDB_API_KEY" in out.stdout
    assert "set -euo" not in out.stdout  # not the script's own source


def test_launch_defaults_to_the_project_venv(tmp_path):
    env = {**os.environ, "MODEL_PATH": "/m", "TRAIN_FILES": "/t.parquet", "VAL_FILES": "/v.parquet",
           "CKPT_DIR": str(tmp_path), "NNODES": "1", "GPUS_PER_NODE": "8", "WANDB_MODE": "offline"}
    env.pop("PYTHON", None)
    out = subprocess.run(["bash", str(LAUNCH), "--dry-run", "dapo_erc_qwen1.5b"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists():
        assert f"# python: {venv_python}" in out.stdout
    assert "# wandb: offline" in out.stdout


def test_smoke_overrides_keep_the_recipe():
    """The smoke run changes sizes, backends and places, never the method under test."""
    keys = [o.split("=", 1)[0].lstrip("+") for o, _ in smoke_overrides(Path("/m"), {"train": "/t", "test": "/v"},
                                                                        Path("/r"), Path("/r/l.jsonl"))]
    for forbidden in ("policy_loss", "clip_ratio", "loss_agg_mode", "filter_groups.enable", "filter_groups.metric",
                      "adv_estimator", "custom_reward_function", "use_v1", "entropy_coeff", "temperature"):
        assert not [k for k in keys if forbidden in k], forbidden


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["dapo_erc_qwen1.5b", "dapo_qwen1.5b"])
def test_smoke_run(recipe, out_dir):
    plan = build_smoke(recipe, out_dir, log=lambda *_: None)
    log_path = out_dir / f"{recipe}.log"
    rc = run_main_ppo(plan, timeout=1200, capture=log_path)
    assert rc == 0, log_path.read_text()[-6000:]

    steps = read_file_log(plan.file_log)
    train = sorted(s for s, m in steps.items() if "timing_s/update_actor" in m)
    assert train == [1, 2, 3], sorted(steps)
    keep = [steps[s]["actor/erc_keep_frac"] for s in train]
    assert all(0.0 < k <= 1.0 for k in keep), keep
    assert any(k < 1.0 for k in keep), keep
    for s in train:
        missing = [k for k in TRAIN_KEYS if k not in steps[s]]
        assert not missing, (s, missing)
    # the rollout server samples with the actor's latest weights (synced after every update)
    for s in train:
        assert steps[s]["training/rollout_probs_diff_max"] < 1e-3, (s, steps[s]["training/rollout_probs_diff_max"])
    for s in (0, 3):  # validation before training and at the end
        assert any(k.startswith("val-core/arith/acc/mean@") for k in steps.get(s, {})), (s, sorted(steps.get(s, {})))
    assert (plan.run_dir / "global_step_2" / "actor").is_dir()

    table = subprocess.run(
        [sys.executable, "-m", "erc_verl.cli", "table", str(plan.run_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith(f"| {recipe} |")]
    assert rows, table.stdout
    # A tiny CPU model: never set beside the paper's published averages.
    assert all("n/a (smoke run)" in row and "tiny CPU smoke model" in row for row in rows), rows
    png = out_dir / f"{recipe}.png"
    plot = subprocess.run(
        [sys.executable, "-m", "erc_verl.cli", "plot", "--out", str(png), str(plan.run_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert plot.returncode == 0 and png.stat().st_size > 0, plot.stderr


def test_a_timed_out_run_is_stopped_with_its_whole_process_group(tmp_path):
    # main_ppo starts Ray and workers; a timeout must not leave them running.
    import os
    import time

    from erc_verl.rehearsal.smoke import SmokePlan

    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '300'])\n"  # stands for Ray's processes
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "child.wait()\n"
    )
    cmd = [sys.executable, "-c", script]
    plan = SmokePlan("none", tmp_path, tmp_path / "log.jsonl", cmd, dict(os.environ))
    lines = []
    rc = run_main_ppo(plan, timeout=2, capture=tmp_path / "out.log", on_line=lines.append)
    assert rc is None and lines[0] == "started\n"  # then the SIGINT traceback of the stopped run
    log = (tmp_path / "out.log").read_text()
    assert log.startswith("$ ") and "\nstarted\n" in log  # the command, then the run's output
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild got the group's SIGINT
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"pid {child} outlived the stopped run")
