"""ERC in verl 0.9.1's trainer modes: each mode is either verified or refused, with its reason.

- main_ppo's V1 modes `sync`, `colocate_async` and `separate_async` are supported. The slow tests
  run a recipe through main_ppo on CPU in each asynchronous mode (the smoke's machinery, `hf`
  rollout) and prove from per-mini-batch numbers recorded inside verl's actor worker
  (erc_verl/rehearsal/mini_batch_probe.py) where H_old comes from: the first update after each
  old-log-prob pass has rho within 1e-6 of 1 and later ones do not; in separate_async with
  parameter_sync_step 2, the H_old the loss receives is the entropy of the cycle-start weights on
  the same tokens (recomputed outside verl with a plain HF model) and not the current weights'.
- Any other V1 mode, verl's experimental one-step-off and fully-async trainers, and bypass mode
  are refused in `erc-verl check`, in launch.sh's preflight (the same check) and by the trainer.
- The CPU runtime pieces separate_async needs: the `cpu_ray` checkpoint engine, and a real copy
  when verl saves the cycle-start weights "to CPU" (erc_verl/cpu/sharded_save.py).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import erc_verl  # noqa: F401  (installs the hooks)
from erc_verl import cli
from erc_verl.integration import support, verl_0_9_1

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "dapo_erc_qwen7b"  # train_batch_size 128, ppo_mini_batch_size 16


def whole(mode=None, policy_loss=None, **extra):
    cfg = {
        "data": {"train_batch_size": 8},
        "trainer": {"use_v1": True, "v1": {"trainer_mode": mode or "sync"}},
        "algorithm": {"filter_groups": {"enable": True, "metric": "acc"}},
        "actor_rollout_ref": {
            "actor": {"strategy": "fsdp2", "use_fused_kernels": False, "policy_loss": policy_loss or ERC}
        },
        **extra,
    }
    return OmegaConf.create(cfg)


ERC = {"loss_mode": "dapo_erc"}
PLAIN = {"loss_mode": "vanilla"}


# ---- every trainer of verl 0.9.1: verified or refused -------------------------------------------


def test_every_v1_trainer_mode_of_verl_is_verified_or_refused():
    from verl.trainer.ppo.v1 import trainer_base

    assert set(trainer_base.TRAINER_REGISTRY) == set(support.V1_TRAINER_MODES)  # verl 0.9.1's modes
    for mode in support.V1_TRAINER_MODES:
        assert support.problems(whole(mode)) == [], mode
    (line,) = support.problems(whole("my_custom_async"))
    assert "trainer.v1.trainer_mode=my_custom_async" in line and "Fix: trainer.v1.trainer_mode=sync" in line
    assert support.problems(whole("my_custom_async", PLAIN)) == []  # verl's own run is left alone


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"async_training": {"staleness_threshold": 0}}, "dynamic sampling"),
        ({"rollout": {"nnodes": 1, "n_gpus_per_node": 8}}, "bypass_mode=true"),
    ],
    ids=["fully_async", "one_step_off"],
)
def test_experimental_trainers_are_refused_with_the_reason(extra, reason):
    (line,) = support.problems(whole(**extra))
    assert line == support.ASYNC_TRAINER_PROBLEM and reason in line and "colocate_async or separate_async" in line
    with pytest.raises(ValueError, match="one-step-off-policy and fully-async"):
        verl_0_9_1.make_separated_init(lambda self, config: None)(object(), whole(**extra))


def test_the_v1_trainer_refuses_what_check_refuses_before_workers_start():
    ran = []
    init = verl_0_9_1.make_v1_trainer_init(lambda self, config: ran.append(config))
    with pytest.raises(ValueError, match="trainer_mode=my_custom_async"):
        init(object(), whole("my_custom_async"))
    bypass = whole("colocate_async", algorithm={"rollout_correction": {"bypass_mode": True}})
    with pytest.raises(ValueError, match="bypass_mode=false"):
        init(object(), bypass)
    init(object(), whole("separate_async"))
    assert len(ran) == 1
    # installed on verl's PPOTrainer, the base of every V1 trainer mode
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    assert getattr(PPOTrainer.__init__, "_erc_verl_plumbing", False)


def erc_verl_check(capsys, *overrides):
    rc = cli.main(["check", RECIPE, *[a for o in overrides for a in ("-o", o)]])
    return rc, capsys.readouterr().out


def test_check_refuses_an_unverified_mode_and_bypass(capsys):
    rc, out = erc_verl_check(capsys, "trainer.v1.trainer_mode=colocate_async")
    assert rc == 0, out
    rc, out = erc_verl_check(
        capsys, "trainer.v1.trainer_mode=colocate_async", "algorithm.rollout_correction.bypass_mode=true"
    )
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert rc == 1 and "skips the old-log-prob pass" in fail


def test_check_states_the_separate_async_batch_rule_in_one_line(capsys):
    rc, out = erc_verl_check(capsys, "trainer.v1.trainer_mode=separate_async")  # parameter_sync_step 4
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert rc == 1 and "128 != 4 x 16" in fail and "fix: trainer.v1.separate_async.parameter_sync_step=8" in fail
    rc, out = erc_verl_check(
        capsys, "trainer.v1.trainer_mode=separate_async", "trainer.v1.separate_async.parameter_sync_step=8"
    )
    assert rc == 0, out


def test_preflight_refuses_the_batch_rule_with_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "erc_verl.repro.check.preflight", RECIPE, "trainer.v1.trainer_mode=separate_async"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("launch.sh: error: trainer.v1.separate_async.parameter_sync_step: ")


# ---- the CPU runtime for separate_async -------------------------------------------------------


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full, timeout=300
    )


def test_cycle_start_weights_saved_to_cpu_do_not_share_storage_with_the_live_ones():
    """verl's separate_async saves the cycle-start weights with DetachActorWorker.save_model_to_cpu
    (FSDP2: fsdp_utils.fsdp2_sharded_save_to_cpu, `.detach().cpu()`), which on CPU would alias the
    live weights: the restore before every old-log-prob pass would then do nothing."""
    out = _python(
        """
        import types, torch
        import erc_verl
        from harness.training_worker import init_single_process_group
        init_single_process_group()
        from omegaconf import OmegaConf
        from torch.distributed.fsdp import fully_shard
        from verl.experimental.separation.engine_workers import DetachActorWorker

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        fully_shard(model)
        worker = DetachActorWorker.__new__(DetachActorWorker)
        worker.config = OmegaConf.create({"actor": {"strategy": "fsdp2"}})
        worker.actor = types.SimpleNamespace(engine=types.SimpleNamespace(module=model))
        worker._strategy_handlers = None
        worker.save_model_to_cpu(0)  # the cycle start
        saved, _ = worker.cpu_saved_models[0]
        live = {n: p._local_tensor for n, p in model.named_parameters()}
        shared = [n for n in live if saved[n][0].untyped_storage().data_ptr() == live[n].untyped_storage().data_ptr()]
        assert not shared, f"cycle-start weights share storage with the live weights: {shared}"
        start = {n: t.clone() for n, t in live.items()}
        with torch.no_grad():
            for t in live.values():
                t.add_(1.0)  # an optimizer step
        worker.restore_model_from_cpu(0)
        assert all(torch.equal(live[n], start[n]) for n in live), "restore did not bring the cycle start back"
        print("ok")
        """,
        VERL_PLATFORM="cpu",
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_cpu_checkpoint_engine_is_the_cpu_runtimes_only():
    out = _python(
        """
        from verl.checkpoint_engine import CheckpointEngineRegistry
        assert "cpu_ray" not in CheckpointEngineRegistry._registry  # nothing at plugin load
        import erc_verl.cpu.checkpoint_engine as engine
        cls = CheckpointEngineRegistry.get("cpu_ray")
        actor, rollout = cls.build_topology(2, 1, [{"mailbox": "m"}, {}, {}])
        assert actor == {"mailbox": ["m", "m"]} and rollout == {"mailbox": ["m"]}
        print("ok")
        """,
        VERL_PLATFORM="cpu",
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run(
        [sys.executable, "-c", "import erc_verl.cpu.checkpoint_engine"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert out.returncode != 0 and "backend=nccl" in out.stderr


# ---- the asynchronous modes through main_ppo on CPU (slow) ----------------------------------------

RHO_ONE = 1e-6  # the first update after an old-log-prob pass: rho within this of 1
RHO_MOVED = 1e-3  # later updates: some token's rho is at least this far from 1
STALENESS = "training/off_policy/trajectory_staleness/max"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("async_modes_cache")  # the tiny model, built once


def _run_mode(tmp_path, cache, mode, *overrides, steps=2):
    """A smoke run of dapo_erc_qwen1.5b in `mode`, with the mini-batch probe in the actor worker."""
    from erc_verl.rehearsal import mini_batch_probe
    from erc_verl.rehearsal.overrides import CPU_PLUGINS

    out, probe = tmp_path / mode, tmp_path / f"{mode}-probe"
    env_vars = "ray_kwargs.ray_init.runtime_env.env_vars"
    modules = ",".join((*CPU_PLUGINS, "erc_verl.rehearsal.layout_probe", mini_batch_probe.MODULE))
    args = [
        # where H_old comes from does not depend on the rollout engine: the light one
        "--rollout",
        "hf",
        "--out",
        str(out),
        "--cache",
        str(cache),
        "dapo_erc_qwen1.5b",
        "--steps",
        str(steps),
        f"trainer.v1.trainer_mode={mode}",
        *overrides,
        # One sequence per micro-batch in both passes, so the old-log-prob pass and the update do the
        # same arithmetic on each sequence and rho differs from 1 only through the weights. (With the
        # recipe's token budget the pass packs all 32 responses of a step into one micro-batch, the
        # update 8: float rounding alone then moves rho by up to 2e-6 on this model.)
        "actor_rollout_ref.actor.use_dynamic_bsz=false",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=false",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
        # the shortest run that proves it: no validation, no checkpoint
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"++{env_vars}.VERL_USE_EXTERNAL_MODULES='{modules}'",
        f"++{env_vars}.{mini_batch_probe.ENV}={probe}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "erc_verl.rehearsal.smoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    from erc_verl.rehearsal.run_folder import read_file_log

    (log,) = sorted((out / "logs").glob("metrics-*.jsonl"))
    steps_logged = {s: m for s, m in read_file_log(log).items() if "timing_s/update_actor" in m}
    records = mini_batch_probe.read_records(probe)
    return proc, out, probe, steps_logged, records


def _staleness_next_to_erc(steps_logged, steps):
    """verl's own staleness metrics are logged at every ERC step, beside the ERC metrics."""
    assert sorted(steps_logged) == list(range(1, steps + 1)), sorted(steps_logged)
    for step, metrics in steps_logged.items():
        assert "actor/erc_keep_frac" in metrics and STALENESS in metrics, (step, sorted(metrics))
        assert 0 <= metrics[STALENESS] <= 1, (step, metrics[STALENESS])
    assert steps_logged[1][STALENESS] == 0  # the first step trains on the initial weights' rollouts


@pytest.mark.slow
def test_colocate_async_h_old_is_the_step_start_weights(tmp_path, cache):
    """colocate_async: one old-log-prob pass per step with the trainer's current weights, then the
    step's 4 mini-batches: rho is 1 at the first, not after."""
    proc, out, _, steps_logged, records = _run_mode(tmp_path, cache, "colocate_async")
    assert "# trainer mode: colocate_async" in proc.stdout
    _staleness_next_to_erc(steps_logged, 2)
    passes = sorted({r["pass"] for r in records})
    assert passes == [0, 1], records  # one pass per step
    for p in passes:
        minis = sorted((r for r in records if r["pass"] == p), key=lambda r: r["mini"])
        assert [r["mini"] for r in minis] == [0, 1, 2, 3]  # 8 prompts / mini-batches of 2
        assert minis[0]["max_abs_rho_minus_1"] <= RHO_ONE, minis[0]
        assert all(r["max_abs_rho_minus_1"] >= RHO_MOVED for r in minis[1:]), minis
    layout = json.loads((out / "layout.json").read_text())
    assert layout["trainer_mode"] == "colocate_async"


def _entropy_of(model, prompt, response, temperature):
    """H of softmax(logits / T) at each response position, the model's own forward."""
    import torch

    from erc_verl.entropy import entropy_from_logits

    ids = torch.cat([prompt, response])[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    first = len(prompt) - 1  # the logits at position i predict token i + 1
    return entropy_from_logits(logits[first : first + len(response)].float(), temperature=temperature)


@pytest.mark.slow
def test_separate_async_h_old_is_the_cycle_start_weights(tmp_path, cache):
    """separate_async, parameter_sync_step 2: per step 2 local updates, each with its own
    old-log-prob pass; the second pass runs on the restored cycle-start weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from erc_verl.rehearsal.tiny_model import ModelSpec, asset_paths

    proc, out, probe, steps_logged, records = _run_mode(
        tmp_path, cache, "separate_async", "trainer.v1.separate_async.parameter_sync_step=2"
    )
    assert "# standalone rollout pool: 1 node(s) x 1 CPU worker(s) = 1 rollout replica(s)" in proc.stdout
    assert "data.train_batch_size=4" in proc.stdout  # 2 x the smoke's mini-batch of 2
    _staleness_next_to_erc(steps_logged, 2)
    layout = json.loads((out / "layout.json").read_text())
    assert layout["standalone_rollout"] == {
        "nnodes": 1,
        "workers_per_node": 1,
        "replicas": 1,
        "checkpoint_engine": "cpu_ray",
    }

    assert [(r["cycle"], r["local"], r["mini"], r["restored"]) for r in records] == [
        (0, 0, 0, False),
        (0, 1, 0, True),
        (1, 0, 0, False),
        (1, 1, 0, True),
    ], records
    model_dir, _ = asset_paths(cache, ModelSpec())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for r in records:
        # the cycle-start weights, as verl saved them at local update 0 (recorded in the worker)
        missing, unexpected = model.load_state_dict(torch.load(probe / f"weights-{r['cycle']}.pt"), strict=False)
        assert not unexpected and not [k for k in missing if k != "lm_head.weight"], (missing, unexpected)
        old_vs_start, cur_vs_start = 0.0, 0.0
        for micro in torch.load(probe / r["dump"]):
            temperature = float(micro["temperature"])
            for i, (prompt, response) in enumerate(zip(micro["prompts"], micro["responses"], strict=True)):
                n = len(response)
                mask = micro["response_mask"][i, :n]
                h_start = _entropy_of(model, prompt, response, temperature)[mask]
                old_vs_start = max(old_vs_start, float((micro["old_entropy"][i, :n][mask] - h_start).abs().max()))
                cur_vs_start = max(cur_vs_start, float((micro["entropy"][i, :n][mask] - h_start).abs().max()))
        # H_old is the cycle-start weights' entropy on these tokens, at every local update
        assert old_vs_start <= 1e-6, (r, old_vs_start)
        if r["local"] == 0:  # the current weights are the cycle start
            assert r["max_abs_rho_minus_1"] <= RHO_ONE and cur_vs_start <= 1e-6, (r, cur_vs_start)
        else:  # one optimizer step later: H_cur (the current weights') is not H_old
            assert r["max_abs_rho_minus_1"] >= RHO_MOVED and cur_vs_start >= 1e-4, (r, cur_vs_start)
