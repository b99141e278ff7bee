"""`scripts/launch.sh --smoke`: a recipe end to end through verl's own main_ppo on CPU.

One ERC recipe and one baseline run as they would on a cluster (V1 trainer, dynamic sampling on
`acc`, the paper's reward, validation, checkpoint, file logger), with the recipes' own rollout
engine (verl's vLLM rollout on vLLM's CPU build) and the CPU overrides of
erc_verl/rehearsal/overrides.py, through the smoke's command line. The ERC run, with LoRA and a
KL loss against the reference model, stops after its step-2 checkpoint and is resumed for step 3,
and its rollout follows the actor at every step; a deliberately broken weight sync fails that same
check, and one that crashes vLLM's worker ends the smoke within a minute. The baseline runs on a
local Ray cluster of two nodes x two workers (the layout rehearsal). Everything is asserted from
verl's file logs, layout.json and the run folder. A few minutes each on 2 cores; marked slow.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from erc_verl.cpu.vllm_hooks import SYNC_ENV, VLLM_VERSION
from erc_verl.rehearsal.leftovers import SHM
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
        "rollout.name",  # the recipes' vllm stays
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


# fp32 rollout against fp32 actor: the gap is rounding (about 1e-6 measured); a rollout that samples
# from weights one update old differs by far more.
SYNC_GAP = 1e-5


def assert_rollout_follows_actor(steps):
    """verl's rollout-vs-actor probability gap under SYNC_GAP at every trained step: from step 2 on
    the rollout can only match the actor if verl's weight sync reached vLLM's kernels."""
    gaps = {s: m["training/rollout_probs_diff_max"] for s, m in steps.items() if "timing_s/update_actor" in m}
    assert sorted(gaps)[1:], gaps  # at least one step after a sync
    assert all(gap < SYNC_GAP for gap in gaps.values()), gaps


def _assert_no_shm_left(run_dir):
    """The /dev/shm files the run's processes mapped (its ledger) are gone."""
    ledgers = sorted((run_dir / "logs").glob("shm-*.txt"))
    assert ledgers, "no /dev/shm ledger in the run folder"
    names = [n for f in ledgers for n in f.read_text().split()]
    assert any(n.startswith("psm_") for n in names), names  # vLLM's shared memory was seen
    assert not [n for n in names if os.path.exists(SHM + n)], names


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
    assert_rollout_follows_actor(steps)
    for s in (0, steps_expected[-1]):  # validation before training and at the end
        assert any(k.startswith("val-core/arith/acc/mean@") for k in steps.get(s, {})), (s, sorted(steps.get(s, {})))
    return steps, keep


def _band(recipe):
    """The recipe's entropy-ratio band, as the worker reads it."""
    from erc_verl.repro.check.compose import compose_recipe
    from erc_verl.settings import settings

    cfg = compose_recipe(ROOT / "recipes", recipe)
    return settings(cfg.actor_rollout_ref.actor.policy_loss).band


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
    # LoRA's small updates may keep every ratio inside the band: assert that the gate's input moved
    # and that the gate agrees with the band at every step (verl reduces the ratio's min and max
    # over mini-batches as a min and a max), not that it clipped.
    low, high = _band(recipe)
    drift = max(
        max(steps[s]["actor/entropy_ratio_max"] - 1, 1 - steps[s]["actor/entropy_ratio_min"]) for s in (1, 2, 3)
    )
    assert drift > 1e-3, drift
    for s, k in zip((1, 2, 3), keep, strict=True):
        outside = steps[s]["actor/entropy_ratio_min"] <= low or steps[s]["actor/entropy_ratio_max"] >= high
        assert (k < 1.0) == outside, (s, k, steps[s]["actor/entropy_ratio_min"], steps[s]["actor/entropy_ratio_max"])
    for s in (1, 2, 3):
        # the reference model (the base, without the adapter) moves apart from the LoRA policy
        assert "actor/kl_loss" in steps[s], sorted(steps[s])
        # a synchronous fp32 run: the first mini-batch's ratios are 1 up to float noise, all kept
        assert steps[s]["actor/erc_keep_frac_first_mb"] == 1.0, (s, steps[s]["actor/erc_keep_frac_first_mb"])
    assert steps[3]["actor/kl_loss"] > 0.0
    layout = json.loads((run_dir / "layout.json").read_text())  # read from the running vLLM server
    assert (layout["rollout_name"], layout["rollout_version"], layout["rollout_replicas"]) == ("vllm", VLLM_VERSION, 1)
    assert f"[smoke] rollout engine: vllm {VLLM_VERSION}, 1 replica(s)" in first.stdout
    _assert_no_shm_left(run_dir)
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
def test_layout_rehearsal_on_two_ray_nodes_with_vllm_replicas(out_dir):
    """The baseline recipe on a local Ray cluster of 2 nodes x 2 workers (NNODES=2 GPUS_PER_NODE=2),
    one vLLM replica per worker, the recipes' Ulysses 4 over the 4 ranks. One mini-batch per step:
    the update runs on the rollout's policy, so every entropy ratio is 1 and ERC's monitor keeps
    every token (a Ulysses rank attending over its own shard only would break it)."""
    recipe = "dapo_qwen1.5b"
    run_dir = out_dir / "two_nodes"
    env = {**os.environ, "NNODES": "2", "GPUS_PER_NODE": "2"}
    one_mini_batch = ["actor_rollout_ref.actor.ppo_mini_batch_size=8"]
    # The layout checks need an update, not learning. A whole-batch Adam step at the smoke's lr
    # (2e-3) moves every weight by about 2e-3 and can leave the tiny model always wrong at step 2
    # (val acc 0.22 -> 0.0 over two steps), so dynamic sampling finds no group with a signal.
    gentle = ["actor_rollout_ref.actor.optim.lr=2e-4"]
    out = _smoke(
        ["--out", str(run_dir), "--cache", str(out_dir / "cache"), recipe, "--steps", "2", *one_mini_batch, *gentle],
        env=env,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "# layout: 2 node(s) x 2 CPU worker(s) = world size 4" in out.stdout
    assert "# rollout: vllm, tensor parallel 1, 4 replica(s), one per worker" in out.stdout
    assert out.stdout.count("ray start --") == 2  # the head, then one worker node
    steps, _ = _assert_trained(recipe, run_dir, [1, 2])
    for s in (1, 2):
        assert steps[s]["actor/erc_keep_frac"] == pytest.approx(1.0, abs=1e-12), (s, steps[s]["actor/erc_keep_frac"])
        for key in ("actor/entropy_ratio_min", "actor/entropy_ratio_max"):
            assert abs(steps[s][key] - 1.0) <= 1e-6, (s, key, steps[s][key])

    layout = json.loads((run_dir / "layout.json").read_text())
    assert layout["world_size"] == 4 and layout["ulysses_sequence_parallel_size"] == 4
    assert (layout["rollout_name"], layout["rollout_version"], layout["rollout_replicas"]) == ("vllm", VLLM_VERSION, 4)
    # read from Ray in the workers: two distinct node ids, two ranks on each
    assert sorted(tuple(n["ranks"]) for n in layout["nodes"]) == [(0, 1), (2, 3)], layout
    assert len({n["node_id"] for n in layout["nodes"]}) == 2
    assert layout["micro_batches_per_mini_batch"] is not None
    _assert_no_shm_left(run_dir)

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


# Two steps, no validation and no checkpoint: only the weight sync is under test.
_SHORT = ["--steps", "2", "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1"]


@pytest.mark.slow
def test_a_broken_weight_sync_fails_the_rollout_check(out_dir):
    """The check test_smoke_run_stopped_after_its_checkpoint_resumes_at_step_3 passes, on a run whose
    vLLM kernels keep the initial weights (erc_verl/cpu/vllm_hooks.py, ERC_VERL_VLLM_WEIGHT_SYNC=stale).
    verl starts vLLM with dummy weights (rollout load_format=dummy), so such a rollout samples noise,
    every group gets one reward and dynamic sampling would give up: it is off here."""
    run_dir = out_dir / "stale_sync"
    env = {**os.environ, SYNC_ENV: "stale"}
    args = ["--out", str(run_dir), "--cache", str(out_dir / "cache"), "dapo_erc_qwen1.5b", *_SHORT]
    out = _smoke([*args, "algorithm.filter_groups.enable=false"], env=env)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    (log,) = _file_logs(run_dir)
    steps = read_file_log(log)
    with pytest.raises(AssertionError):
        assert_rollout_follows_actor(steps)
    assert steps[2]["training/rollout_probs_diff_max"] > 100 * SYNC_GAP, steps[2]["training/rollout_probs_diff_max"]


@pytest.mark.slow
def test_a_vllm_worker_failure_ends_the_smoke_within_a_minute(out_dir):
    """A weight sync that fails inside vLLM's worker (vLLM's own remove_weight=True:
    ERC_VERL_VLLM_WEIGHT_SYNC=drop) ends the smoke within 60 s of the first error line, with one
    line naming the component, and leaves no /dev/shm file of the run behind."""
    import time

    run_dir = out_dir / "failed_sync"
    env = {**os.environ, SYNC_ENV: "drop"}
    cmd = [sys.executable, "-m", "erc_verl.rehearsal.smoke", "--out", str(run_dir), "--cache", str(out_dir / "cache")]
    proc = subprocess.Popen(
        [*cmd, "dapo_erc_qwen1.5b", *_SHORT],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    from erc_verl.rehearsal.watchdog import FailureWatch

    watch, first_error, lines = FailureWatch(), None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            watch.on_line(line)
            if first_error is None and watch.component is not None:
                first_error = time.monotonic()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    text = "".join(lines)
    assert first_error is not None, text[-6000:]
    assert rc not in (0, None), text[-3000:]
    assert ended - first_error < 60, (ended - first_error, text[-3000:])
    from erc_verl.rehearsal.watchdog import FATAL

    components = tuple(f"[smoke] dapo_erc_qwen1.5b: {name} failed: " for name, _ in FATAL)
    failed = [line for line in lines if line.startswith(components)]
    assert len(failed) == 1, text[-3000:]
    _assert_no_shm_left(run_dir)


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
