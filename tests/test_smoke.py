"""`scripts/launch.sh --smoke`: a recipe end to end through verl's own main_ppo on CPU.

One ERC recipe and one baseline run as they would on a cluster (V1 trainer, dynamic sampling on
`acc`, the paper's reward, validation, checkpoint, file logger), with the CPU overrides of
erc_verl/rehearsal/overrides.py, through the smoke's command line. The ERC run, with LoRA and a
KL loss against the reference model, stops after its step-2 checkpoint and is resumed for step
3; the baseline runs on a local Ray cluster of two nodes. Everything is asserted from verl's file
logs, layout.json and the run folder. A few minutes each on 2 cores; marked slow.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from erc_verl.rehearsal.smoke import ROOT, read_file_log, run_main_ppo, smoke_overrides

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


def test_real_launch_dry_run_says_how_wandb_logs(tmp_path):
    # Which interpreter the real launch uses (never the project's .venv): tests/test_launch.py.
    env = {
        **os.environ,
        "MODEL_PATH": "/m",
        "TRAIN_FILES": "/t.parquet",
        "VAL_FILES": "/v.parquet",
        "CKPT_DIR": str(tmp_path),
        "NNODES": "1",
        "GPUS_PER_NODE": "8",
        "WANDB_MODE": "offline",
    }
    env.pop("PYTHON", None)
    out = subprocess.run(
        ["bash", str(LAUNCH), "--dry-run", "dapo_erc_qwen1.5b"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "# wandb: offline" in out.stdout


def test_smoke_overrides_keep_the_recipe():
    """The smoke run changes sizes, backends and places, never the method under test."""
    keys = [
        o.split("=", 1)[0].lstrip("+")
        for o, _ in smoke_overrides(Path("/m"), {"train": "/t", "test": "/v"}, Path("/r"), Path("/r/l.jsonl"))
    ]
    for forbidden in (
        "policy_loss",
        "clip_ratio",
        "loss_agg_mode",
        "filter_groups.enable",
        "filter_groups.metric",
        "adv_estimator",
        "custom_reward_function",
        "use_v1",
        "entropy_coeff",
        "temperature",
    ):
        assert not [k for k in keys if forbidden in k], forbidden


def _smoke(args, env=None, timeout=1500):
    return subprocess.run(
        [sys.executable, "-m", "erc_verl.rehearsal.smoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _file_logs(run_dir):
    return sorted((run_dir / "logs").glob("metrics-*.jsonl"))


def _assert_trained(recipe, run_dir, steps_expected):
    """verl's file logs of a run folder, merged: every step trained, logged and validated."""
    from erc_verl.repro.results import load_run

    steps = load_run(run_dir).steps
    train = sorted(s for s, m in steps.items() if "timing_s/update_actor" in m)
    assert train == steps_expected, sorted(steps)
    keep = [steps[s]["actor/erc_keep_frac"] for s in train]
    assert all(0.0 < k <= 1.0 for k in keep), keep
    for s in train:
        missing = [k for k in TRAIN_KEYS if k not in steps[s]]
        assert not missing, (s, missing)
        # the rollout server samples with the actor's latest weights (synced after every update)
        assert steps[s]["training/rollout_probs_diff_max"] < 1e-3, (s, steps[s]["training/rollout_probs_diff_max"])
    for s in (0, steps_expected[-1]):  # validation before training and at the end
        assert any(k.startswith("val-core/arith/acc/mean@") for k in steps.get(s, {})), (s, sorted(steps.get(s, {})))
    return steps, keep


# LoRA with a KL loss against the reference model, which verl runs through the actor without the
# adapter: the reference pass must not be taken for the old-log-prob pass.
LORA_KL = [
    "actor_rollout_ref.model.lora_rank=8",
    "actor_rollout_ref.model.lora_alpha=16",
    "actor_rollout_ref.actor.use_kl_loss=true",
]


@pytest.mark.slow
def test_smoke_run_stopped_after_its_checkpoint_resumes_at_step_3(out_dir):
    """An ERC recipe with LoRA and a KL loss: 2 steps (checkpoint at step 2), then the same run
    folder with --steps 3."""
    recipe = "dapo_erc_qwen1.5b"
    run_dir = out_dir / "erc_run"
    cache = out_dir / "cache"
    first = _smoke(["--out", str(run_dir), "--cache", str(cache), recipe, "--steps", "2", *LORA_KL])
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert (run_dir / "global_step_2" / "actor").is_dir()
    (log1,) = _file_logs(run_dir)
    steps1 = read_file_log(log1)
    assert sorted(s for s, m in steps1.items() if "timing_s/update_actor" in m) == [1, 2]

    second = _smoke(["--resume", str(run_dir), "--cache", str(cache), recipe, "--steps", "3", *LORA_KL])
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
    log2 = [f for f in _file_logs(run_dir) if f != log1]
    assert len(log2) == 1, _file_logs(run_dir)
    steps2 = read_file_log(log2[0])
    # verl's resume_mode=auto loaded global_step_2: only step 3 was trained the second time
    assert sorted(s for s, m in steps2.items() if "timing_s/update_actor" in m) == [3], sorted(steps2)
    assert read_file_log(log1) == steps1  # the first launch's log is untouched
    steps, keep = _assert_trained(recipe, run_dir, [1, 2, 3])
    assert any(k < 1.0 for k in keep), keep
    for s in (1, 2, 3):
        # the reference model (the base, without the adapter) moves apart from the LoRA policy
        assert "actor/kl_loss" in steps[s], sorted(steps[s])
        # a synchronous fp32 run: the first mini-batch's ratios are 1 up to float noise, all kept
        assert steps[s]["actor/erc_keep_frac_first_mb"] == 1.0, (s, steps[s]["actor/erc_keep_frac_first_mb"])
    assert steps[3]["actor/kl_loss"] > 0.0
    # each launch saved its console output beside its file log
    consoles = sorted((run_dir / "logs").glob("console-*.log"))
    assert len(consoles) == 2 and "verl.trainer.main_ppo" in consoles[1].read_text()
    # the closing lines name the next commands exactly
    assert f"scripts/erc-verl table {run_dir}" in second.stdout
    assert f"scripts/erc-verl plot {run_dir}" in second.stdout

    table = subprocess.run(
        [sys.executable, "-m", "erc_verl.cli", "table", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith(f"| {recipe}")]
    assert rows, table.stdout
    # A tiny CPU model: never set beside the paper's published averages.
    assert all("n/a (smoke run)" in row and "tiny CPU smoke model" in row for row in rows), rows
    plot = subprocess.run(
        [sys.executable, "-m", "erc_verl.cli", "plot", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert plot.returncode == 0 and (run_dir / "plot.png").stat().st_size > 0, plot.stderr


@pytest.mark.slow
def test_smoke_run_on_two_ray_nodes_places_one_rank_on_each(out_dir):
    """The baseline recipe on a local Ray cluster of 2 nodes x 1 worker (NNODES=2 GPUS_PER_NODE=1)."""
    recipe = "dapo_qwen1.5b"
    run_dir = out_dir / "two_nodes"
    env = {**os.environ, "NNODES": "2", "GPUS_PER_NODE": "1"}
    # Data parallel 2: Ulysses 1 by the user's override (the smoke keeps what the recipe and the
    # overrides ask for when it divides the world size).
    sp1 = [
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size=1",
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=1",
    ]
    out = _smoke(["--out", str(run_dir), "--cache", str(out_dir / "cache"), recipe, "--steps", "2", *sp1], env=env)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "# layout: 2 node(s) x 1 CPU worker(s) = world size 2" in out.stdout
    assert "rollout tensor parallel: 1" in out.stdout
    assert out.stdout.count("ray start --") == 2  # the head, then one worker node
    _assert_trained(recipe, run_dir, [1, 2])

    layout = json.loads((run_dir / "layout.json").read_text())
    assert layout["world_size"] == 2 and layout["ulysses_sequence_parallel_size"] == 1
    # read from Ray in the workers: two distinct node ids, one rank on each
    assert len(layout["nodes"]) == 2, layout
    assert sorted(tuple(n["ranks"]) for n in layout["nodes"]) == [(0,), (1,)], layout
    assert len({n["node_id"] for n in layout["nodes"]}) == 2
    assert layout["micro_batches_per_mini_batch"] is not None

    # the cluster is gone: no process names its private temp dir, and the dir itself is removed
    temp = re.search(r"local Ray cluster of 2 nodes at \S+ \(temp dir (\S+)\)", out.stdout).group(1)
    assert temp.startswith("/tmp/erc-ray-")
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if temp.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            pass
    assert not left, left
    assert not Path(temp).exists()


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
