"""Layouts through verl's own trainer (`main_ppo`), on CPU: what the cluster run will do.

The `hf` rollout seeds every sample from its request (erc_verl/cpu/rollout.py), so the same
recipe and seed sample the same responses with 1 or 2 rollout replicas, once the step's batch
does not depend on which groups finish first (see the test's docstring): the rewards and response
lengths of every step are equal. (vLLM seeds per engine, so this holds for `hf` only.) On-policy
exactness with Ulysses across ranks, through main_ppo with the recipes' vLLM rollout on two Ray
nodes, is tests/test_smoke.py's layout rehearsal.

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
            "--rollout",
            "hf",
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
