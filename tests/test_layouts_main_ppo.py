"""Layouts through verl's own trainer (`main_ppo`), on CPU: what the cluster run will do.

* On-policy exactness at data parallel 2 x Ulysses 2 (4 workers): with one mini-batch per step
  the update's policy is the rollout's, so every token's entropy ratio is 1 and ERC keeps all.
  A Ulysses rank that attended over its own shard only would break this.
* The `hf` rollout seeds every sample from its request (erc_verl/cpu/rollout.py), so the
  same recipe and seed sample the same responses with 1 or 2 rollout replicas, once the step's
  batch does not depend on which groups finish first (see the test's docstring): the rewards
  and response lengths of every step are equal.

The smoke runs through its command line and verl's file log, the interface users have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from erc_verl.rehearsal.smoke import read_file_log

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "dapo_erc_qwen1.5b"
SP = (
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size={n}",
    "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size={n}",
)


def smoke(out: Path, workers: int, *overrides: str, steps: int = 2) -> dict[int, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "GPUS_PER_NODE", "RAY_ADDRESS")}
    env["GPUS_PER_NODE"] = str(workers)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "erc_verl.rehearsal.smoke",
            RECIPE,
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--cache",
            str(ROOT / "runs" / "smoke" / ".cache"),
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    logs = sorted((out / "logs").glob("metrics-*.jsonl"))
    assert logs, f"no file log in {out}/logs"
    steps_logged = {s: m for s, m in read_file_log(logs[-1]).items() if "actor/erc_keep_frac" in m}
    assert sorted(steps_logged) == list(range(1, steps + 1)), sorted(steps_logged)
    return steps_logged


def test_on_policy_at_dp2_x_ulysses2_keeps_every_token(tmp_path):
    # 8 prompts x 4 responses in one mini-batch: the update runs on the rollout's policy.
    steps = smoke(tmp_path / "dp2sp2", 4, *(s.format(n=2) for s in SP), "actor_rollout_ref.actor.ppo_mini_batch_size=8")
    for step, m in steps.items():
        assert m["actor/erc_keep_frac"] == pytest.approx(1.0, abs=1e-12), (step, m["actor/erc_keep_frac"])
        assert abs(m["actor/entropy_ratio_min"] - 1.0) <= 1e-6, (step, m["actor/entropy_ratio_min"])
        assert abs(m["actor/entropy_ratio_max"] - 1.0) <= 1e-6, (step, m["actor/entropy_ratio_max"])


def test_one_and_two_rollout_replicas_sample_the_same_responses(tmp_path):
    """What is comparable across layouts, and why the rest is not.

    verl's V1 trainer builds each step's batch from the groups in the order they finish, and
    dynamic sampling keeps the first groups that pass its filter: with 1 or 2 replicas other
    groups finish first, so the prompts of a step and the order of its mini-batches differ.
    With dynamic sampling off every step holds all of its prompts; with one mini-batch the
    update does not depend on their order (token-mean over the whole batch); and without the
    micro-batch-normalised positive-sample NLL the objective does not depend on how the ranks
    split it. Then both layouts sample the same responses at every step.
    """
    same_objective = (
        "algorithm.filter_groups.enable=false",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.policy_loss.positive_nll_coeff=0",
    )
    one = smoke(tmp_path / "dp1", 1, *same_objective)
    two = smoke(tmp_path / "dp2", 2, *same_objective)
    for step in one:
        a, b = one[step], two[step]
        assert a["critic/score/mean"] == b["critic/score/mean"], step
        assert a["response_length/mean"] == b["response_length/mean"], step
        # On-policy: every token kept (a fraction summed over ranks may differ in the last bit).
        assert a["actor/erc_keep_frac"] == pytest.approx(1.0, abs=1e-12), step
        assert b["actor/erc_keep_frac"] == pytest.approx(1.0, abs=1e-12), step
        for key in ("actor/entropy_ratio_min", "actor/entropy_ratio_max"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (step, key)
