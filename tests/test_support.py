"""What erc_verl refuses (integration/support.py), what it leaves alone in a non-ERC run, the
wiring checks, and the keep-fraction floor warning."""

import logging
import os
import subprocess
import sys
import textwrap
import types

import pytest
from omegaconf import OmegaConf

import erc_verl  # noqa: F401  (installs the hooks)
from erc_verl.integration import driver_watch, dynamic_sampling, support, verl_0_9_1
from erc_verl.metrics import KeepFracFloor, NoPositiveResponses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def whole(policy_loss=None, **sections):
    cfg = {
        "data": {"train_batch_size": 8},
        "trainer": {"use_v1": True},
        "algorithm": {"filter_groups": {"enable": True, "metric": "acc"}},
        "actor_rollout_ref": {
            "actor": {"strategy": "fsdp2", "use_fused_kernels": False, "policy_loss": policy_loss or {}}
        },
    }
    for key, value in sections.items():
        node = cfg
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return OmegaConf.create(cfg)


PLAIN = {"loss_mode": "vanilla"}
ERC = {"loss_mode": "dapo_erc"}


# ---- a non-ERC run is verl's own run -----------------------------------------------------------


def test_plain_run_passes_through_every_wrapper(monkeypatch):
    monkeypatch.delenv("ERC_VERL_MAX_FILTERED_BATCHES", raising=False)
    cfg = whole(PLAIN, trainer__use_v1=False)
    assert support.problems(cfg) == [] and not support.erc_run(cfg)

    # ppo_loss: verl's function gets the very same arguments and its result comes back as is.
    calls = []
    result = (object(), {"actor/pg_loss": 1.0})

    def verl_ppo_loss(config, model_output, data, dp_group=None):
        calls.append((config, model_output, data, dp_group))
        return result

    actor = cfg.actor_rollout_ref.actor
    model_output, data = {"log_probs": object()}, object()
    loss, metrics = verl_0_9_1.make_ppo_loss(verl_ppo_loss)(actor, model_output, data, "dp")
    assert calls == [(actor, model_output, data, "dp")] and (loss, metrics) == result and metrics is result[1]

    # v0 trainer with filter_groups: verl's fit runs (verl's own warning, not ours).
    ran = []
    fit = verl_0_9_1.make_v0_fit(lambda self: ran.append(True))
    fit(types.SimpleNamespace(config=cfg))
    assert ran == [True]

    # V1 dynamic sampling: the trainer's buffer is returned untouched, methods and all.
    buffer = types.SimpleNamespace(filter_groups_metric="acc", sample=lambda *a: None, _evict_terminal_groups=None)
    sample = buffer.sample
    module = types.SimpleNamespace(PPOTrainer=type("PPOTrainer", (), {"_build_replay_buffer": lambda self: buffer}))
    dynamic_sampling._patch_trainer_base(module)
    built = module.PPOTrainer._build_replay_buffer(types.SimpleNamespace(config=cfg))
    assert built is buffer and built.sample is sample and not getattr(built, "_erc_verl_bounded", False)


@pytest.mark.parametrize(
    "policy_loss, extra",
    [
        (ERC, {}),
        ({"loss_mode": "vanilla", "entropy_ratio_monitor": True}, {}),
        ({"loss_mode": "vanilla", "positive_nll_coeff": 0.1}, {}),
        (PLAIN, {"algorithm__filter_groups__max_num_gen_batches": 2}),
    ],
    ids=["erc", "monitor", "positive_nll", "asked_for_bound"],
)
def test_erc_runs_keep_the_bound(policy_loss, extra, monkeypatch):
    monkeypatch.delenv("ERC_VERL_MAX_FILTERED_BATCHES", raising=False)
    cfg = whole(policy_loss, **extra)
    buffer = types.SimpleNamespace(filter_groups_metric="acc", sample=lambda *a: None, _evict_terminal_groups=None)
    module = types.SimpleNamespace(PPOTrainer=type("PPOTrainer", (), {"_build_replay_buffer": lambda self: buffer}))
    dynamic_sampling._patch_trainer_base(module)
    assert module.PPOTrainer._build_replay_buffer(types.SimpleNamespace(config=cfg))._erc_verl_bounded


def test_erc_run_on_the_v0_trainer_is_refused():
    cfg = whole(ERC, trainer__use_v1=False)
    with pytest.raises(ValueError, match="trainer.use_v1=true"):
        verl_0_9_1.make_v0_fit(lambda self: None)(types.SimpleNamespace(config=cfg))
    assert support.problems(cfg) == [support.V0_DYNAMIC_SAMPLING_PROBLEM]


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fix",
    [
        ({"actor_rollout_ref__actor__strategy": "megatron"}, "strategy=fsdp2"),
        ({"actor_rollout_ref__actor__use_fused_kernels": True}, "use_fused_kernels=false"),
        ({"async_training": {"staleness_threshold": 0}}, "main_ppo"),
        ({"rollout": {"nnodes": 1, "n_gpus_per_node": 8}}, "main_ppo"),
        ({"algorithm__rollout_correction__bypass_mode": True}, "bypass_mode=false"),
    ],
    ids=["megatron", "fused", "fully_async", "one_step_off", "bypass"],
)
def test_what_erc_cannot_gate_is_refused_with_its_fix(extra, fix):
    erc, plain = whole(ERC, **extra), whole(PLAIN, **extra)
    found = support.problems(erc)
    assert len(found) == 1 and fix in found[0] and "\n" not in found[0]
    assert support.problems(plain) == []


def test_fused_kernels_opt_in_names_the_measured_error():
    cfg = whole({**ERC, "fused_entropy_accepted_rel_error": 0.5}, actor_rollout_ref__actor__use_fused_kernels=True)
    assert support.problems(cfg)  # accepting less than the measured error is no opt-in
    cfg.actor_rollout_ref.actor.policy_loss.fused_entropy_accepted_rel_error = 1.0
    assert support.problems(cfg) == []


def test_first_update_refuses_another_engine_and_never_uses_verls_entropy():
    """At the first loss call, the worker's actor config goes through the same rules; and an
    update whose engine gave no erc_verl gate entropy stops instead of using verl's `entropy`."""
    actor = whole(ERC, actor_rollout_ref__actor__strategy="megatron").actor_rollout_ref.actor
    wrapped = verl_0_9_1.make_ppo_loss(lambda *a, **k: pytest.fail("verl's loss must not run"))
    with pytest.raises(ValueError, match="strategy=fsdp2"):
        wrapped(actor, {"entropy": object()}, object())
    actor = whole(ERC).actor_rollout_ref.actor
    with pytest.raises(ValueError, match="never mixed in"):
        wrapped(actor, {"entropy": object(), "log_probs": object()}, object())


def test_separated_trainers_are_refused_for_erc_runs():
    init = verl_0_9_1.make_separated_init(lambda self, config, *a, **k: None)
    with pytest.raises(ValueError, match="one-step-off"):
        init(object(), whole(ERC))
    init(object(), whole(PLAIN))  # verl's own run


# ---- wiring -----------------------------------------------------------------------------------


def test_failing_wrapper_names_erc_verl_and_verl_release():
    def broken(module):
        raise AttributeError("no attribute 'FSDPEngineWithLMHead'")

    with pytest.raises(RuntimeError, match=r"erc_verl could not wrap fake\.mod .*verl 0\.9\.1"):
        verl_0_9_1._named(broken)(types.SimpleNamespace(__name__="fake.mod"))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": ROOT, **env}
    full.pop("VERL_PLATFORM", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full, timeout=300
    )


def test_distillation_bound_before_the_plugin_gets_the_wrapped_ppo_loss():
    """verl/trainer/distillation/losses.py binds ppo_loss at import: imported before erc_verl
    (plugins off), it must still call the wrapped one once erc_verl loads; a module that keeps
    verl's original is named in the ERC loss's error."""
    out = run_python(
        """
        import verl.workers.utils.losses as losses
        import verl.trainer.distillation.losses as distillation
        assert not hasattr(distillation.ppo_loss, "_erc_verl_plumbing")
        import types, sys
        stale = types.ModuleType("user_trainer_copy"); stale.ppo_loss = losses.ppo_loss
        sys.modules["user_trainer_copy"] = stale
        import erc_verl
        from erc_verl.integration.verl_0_9_1 import wiring_diagnosis
        assert getattr(losses.ppo_loss, "_erc_verl_plumbing", False)
        assert distillation.ppo_loss is losses.ppo_loss
        print(wiring_diagnosis())
        """,
        VERL_USE_EXTERNAL_PLUGINS="none",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert "user_trainer_copy" in line and "verl.trainer.distillation" not in line and "0.9.1" in line


def test_import_error_reaches_the_user_at_warning(caplog, monkeypatch):
    import erc_verl as package

    def fail():
        raise ImportError("erc_verl supports verl==0.9.1 only; found verl 0.8.0")

    monkeypatch.setattr(package, "check_verl_version", fail)
    with caplog.at_level(logging.WARNING, logger="erc_verl"), pytest.raises(ImportError):
        package._load()
    (record,) = [r for r in caplog.records if r.name == "erc_verl"]
    assert record.levelno >= logging.WARNING and "erc_verl failed to load with verl 0.9.1" in record.getMessage()


# ---- keep-fraction floor ------------------------------------------------------------------------


def test_keep_frac_floor_warns_once_after_consecutive_steps():
    watch = KeepFracFloor(floor=0.5, steps=3, low=0.95, high=1.05)
    assert [watch.observe(v) for v in (0.4, 0.3, 0.9, 0.4, 0.45)] == [None] * 5  # the run was broken
    message = watch.observe(0.2)
    assert "below 0.5 for 3 steps" in message and "(0.95, 1.05)" in message and "0.200" in message
    assert watch.observe(0.1) is None  # once
    assert KeepFracFloor(0.0, 1, 0.95, 1.05).observe(0.0) is None  # floor 0 disables


def test_keep_frac_floor_on_the_trainers_logger(caplog):
    """verl's Tracking (the driver's logger) is wrapped: data passes unchanged, one warning."""
    from verl.utils.tracking import Tracking

    cfg = OmegaConf.to_container(whole({**ERC, "keep_frac_floor": 0.6, "keep_frac_floor_steps": 2}))
    tracker = Tracking(project_name="p", experiment_name="e", default_backend=[], config=cfg)
    with caplog.at_level(logging.WARNING, logger="erc_verl"):
        for step, value in enumerate((0.7, 0.5, 0.55, 0.4)):
            data = {driver_watch.KEY: value, "actor/pg_loss": 1.0}
            tracker.log(data=data, step=step)
            assert data == {driver_watch.KEY: value, "actor/pg_loss": 1.0}
    warnings = [r.getMessage() for r in caplog.records if r.name == "erc_verl"]
    assert len(warnings) == 1 and "0.500, 0.550" in warnings[0]
    plain = Tracking(
        project_name="p", experiment_name="e", default_backend=[], config=OmegaConf.to_container(whole(PLAIN))
    )
    assert all(watch is None for watch in plain._erc_verl_watches.values())


# ---- no positive response for the positive-sample NLL -------------------------------------------


def test_no_positive_response_warns_once_in_the_first_steps():
    watch = NoPositiveResponses(steps=3, coeff=0.1, reward=1.0, compare="eq")
    assert [watch.observe(v) for v in (0.0, 0.0)] == [None, None]
    message = watch.observe(0.0)
    assert "first 3 steps" in message and "== 1" in message and "positive_nll_compare=ge" in message
    assert watch.observe(0.0) is None  # once
    early = NoPositiveResponses(steps=3, coeff=0.1, reward=1.0, compare="eq")
    assert [early.observe(v) for v in (0.0, 0.25, 0.0, 0.0, 0.0)] == [None] * 5  # a positive was seen
    assert NoPositiveResponses(0, 0.1, 1.0, "eq").observe(0.0) is None  # 0 disables


def test_no_positive_response_on_the_trainers_logger(caplog):
    from verl.utils.tracking import Tracking

    key = driver_watch.POSITIVE_KEY
    cfg = OmegaConf.to_container(
        whole(
            {
                **ERC,
                "positive_nll_coeff": 0.1,
                "positive_nll_reward": 1.1,
                "positive_nll_compare": "ge",
                "positive_nll_warn_steps": 2,
            }
        )
    )
    tracker = Tracking(project_name="p", experiment_name="e", default_backend=[], config=cfg)
    with caplog.at_level(logging.WARNING, logger="erc_verl"):
        for step in range(3):
            tracker.log(data={key: 0.0}, step=step)
    warnings = [r.getMessage() for r in caplog.records if r.name == "erc_verl"]
    assert len(warnings) == 1 and ">= 1.1" in warnings[0] and "first 2 steps" in warnings[0]
    off = Tracking(project_name="p", experiment_name="e", default_backend=[], config=OmegaConf.to_container(whole(ERC)))
    assert off._erc_verl_watches[key] is None  # positive_nll_coeff 0: nothing to watch


def test_global_nll_is_refused_on_a_patched_tree_only(monkeypatch):
    from erc_verl.integration import version

    actor = {"strategy": "fsdp2", "policy_loss": {**ERC, "positive_nll_coeff": 0.1, "positive_nll_norm": "global"}}
    monkeypatch.setattr(version, "tree_is_patched", lambda: False)
    assert support.global_nll_problem(actor) is None
    monkeypatch.setattr(version, "tree_is_patched", lambda: True)
    assert "positive_nll_norm=micro" in support.global_nll_problem(actor)
    assert any("positive_nll_norm=micro" in p for p in support.problems(whole(actor["policy_loss"])))
    micro = {**actor, "policy_loss": {**actor["policy_loss"], "positive_nll_norm": "micro"}}
    assert support.global_nll_problem(micro) is None
