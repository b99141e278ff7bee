"""scripts/launch.sh stops before Ray starts on each mistake the offline check catches, with one
line naming the problem and the fix, and creates nothing (no run folder, no Ray temp folder)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "scripts" / "launch.sh"
RECIPE = "dapo_erc_qwen7b"


@pytest.fixture
def env(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    for name in ("train.parquet", "val.parquet"):
        (tmp_path / name).write_bytes(b"")
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHON")}
    base.update(
        MODEL_PATH=str(tmp_path / "model"),
        TRAIN_FILES=str(tmp_path / "train.parquet"),
        VAL_FILES=str(tmp_path / "val.parquet"),
        CKPT_DIR=str(tmp_path / "ckpt"),
        NNODES="1",
        GPUS_PER_NODE="8",
        PYTHON=sys.executable,
        RAY_TMPDIR=str(tmp_path / "ray"),
        TMPDIR=str(tmp_path),
    )
    return base


def refused(env, *args, cwd=None):
    proc = subprocess.run(["bash", str(LAUNCH), *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("launch.sh: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    # Stopped before Ray: no run folder, no Ray session folder.
    assert not Path(env["CKPT_DIR"]).exists()
    assert not Path(env["RAY_TMPDIR"]).exists() and not list(Path(env["TMPDIR"]).glob("ray*"))
    return lines[0]


CASES = [
    (
        {},
        ["actor_rollout_ref.actor.policy_loss.loss_mode=dapo-erc"],
        ["not a registered policy loss", "loss_mode=dapo_erc"],
    ),
    (
        {},
        ["actor_rollout_ref.actor.policy_loss.entropy_ratio_lo=0.9"],
        ["did you mean actor_rollout_ref.actor.policy_loss.entropy_ratio_low"],
    ),
    ({}, ["actor_rollout_ref.actor.policy_loss.entropy_ratio_low=1.5"], ["entropy_ratio_low=1.5 is outside [0.5, 1)"]),
    # a band typed as an epsilon (the paper writes its band as epsilon 0.05)
    (
        {},
        ["actor_rollout_ref.actor.policy_loss.entropy_ratio_low=0.05"],
        ["entropy_ratio_low=0.05 is outside", "bounds", "low 0.95, high 1.05"],
    ),
    (
        {},
        ["actor_rollout_ref.actor.policy_loss.entropy_ratio_high=50"],
        ["entropy_ratio_high=50 is outside", "bounds", "low 0.95, high 1.05"],
    ),
    ({}, ["trainer.total_epochs=abc"], ["'abc' is not a number"]),
    ({"GPUS_PER_NODE": "3"}, [], ["Ulysses size 4 does not divide"]),
    (
        {"GPUS_PER_NODE": "6"},
        [
            "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
            "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=2",
            "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=10240",
        ],
        ["data-parallel ranks"],
    ),
    ({"MODEL_PATH": "/no/such/model"}, [], ["MODEL_PATH", "no such model folder"]),
    ({"TRAIN_FILES": "/no/train.parquet"}, [], ["TRAIN_FILES", "/no/train.parquet"]),
    ({"VAL_FILES": "/no/aime.parquet"}, [], ["VAL_FILES", "/no/aime.parquet"]),
]


@pytest.mark.parametrize("changes, overrides, expected", CASES)
def test_real_launch_refuses_before_ray(env, changes, overrides, expected):
    line = refused({**env, **changes}, RECIPE, *overrides)
    for part in expected:
        assert part in line
    assert "+actor_rollout_ref" not in line  # never Hydra's advice to append an ERC key


def test_cpu_torch_is_refused_naming_the_interpreter(env):
    line = refused(env, RECIPE)
    assert sys.executable in line and "without CUDA" in line and "PYTHON=" in line


def test_smoke_checks_the_overrides_before_ray(env, tmp_path):
    env = {**env, "ERC_VERL_PYTHON": sys.executable}
    line = refused(env, "--smoke", RECIPE, "actor_rollout_ref.actor.policy_loss.entropy_ratio_lo=0.9")
    assert "entropy_ratio_low" in line


def test_real_launch_never_picks_the_project_venv(env):
    env = {k: v for k, v in env.items() if k != "PYTHON"}
    proc = subprocess.run(
        ["bash", str(LAUNCH), "--dry-run", RECIPE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "/.venv/bin/python" not in proc.stdout and "PYTHON=" in proc.stdout


def _venv(tmp_path, name, *, checkout=False, verl=None):
    """A bare venv (no pip, none of this venv's packages); `checkout`: erc_verl importable from this
    checkout through a .pth file; `verl`: an installed-package record of that verl release."""
    venv = tmp_path / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = venv.glob("lib/python*/site-packages")
    if checkout:
        (site / "erc_verl_checkout.pth").write_text(str(ROOT) + "\n")
    if verl:
        record = site / f"verl-{verl}.dist-info"
        record.mkdir()
        (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: verl\nVersion: {verl}\n")
    return str(venv / "bin" / "python")


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", ["PYTHON=/no/such/python: no such interpreter", "fix: PYTHON="]),
        ("no erc_verl", ["has no erc_verl", "fix: install it there", "PYTHON=/path/to/gpu-env/bin/python"]),
        ("no verl", ["cannot load erc_verl", "verl is not installed", "pip install 'verl==0.9.1'"]),
        ("other verl", ["cannot load erc_verl", "found verl 0.8.0", "pip install 'verl==0.9.1'"]),
    ],
)
def test_an_interpreter_without_erc_verl_or_verl_0_9_1_is_refused_in_one_line(env, tmp_path, kind, expected):
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the interpreter finds erc_verl or not by itself
    python = {
        "missing": lambda: "/no/such/python",
        "no erc_verl": lambda: _venv(tmp_path, "bare"),
        "no verl": lambda: _venv(tmp_path, "noverl", checkout=True),
        "other verl": lambda: _venv(tmp_path, "otherverl", checkout=True, verl="0.8.0"),
    }[kind]()
    # Not from the checkout: `python -` and `python -m` would find its erc_verl in the working directory.
    line = refused({**env, "PYTHON": python}, RECIPE, cwd=tmp_path)
    for part in expected:
        assert part in line, line
