"""How the plugin attaches to verl: the after-import hook, what `import verl` loads, v0 refusal."""

import json
import subprocess
import sys
import textwrap
import threading

import pytest

from erc_verl.integration import hooks


def _run(code: str, env_extra: dict | None = None) -> str:
    import os

    env = dict(os.environ)
    env.pop("VERL_PLATFORM", None)
    env.update(env_extra or {})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A fresh package `erc_hook_probe` with a module `target` defining class Worker."""
    pkg = tmp_path / "erc_hook_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "target.py").write_text(
        "import time\ntime.sleep(0.05)\nclass Worker:\n    def run(self):\n        return 'plain'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "erc_hook_probe.target"
    for name in [n for n in sys.modules if n.startswith("erc_hook_probe")]:
        del sys.modules[name]
    hooks._PATCHES.pop("erc_hook_probe.target", None)


def _patch(module):
    if not getattr(module.Worker.run, "patched", False):

        def run(self):
            return "patched"

        run.patched = True
        module.Worker.run = run


def test_a_spec_probe_before_the_import_does_not_disarm_the_hook(fake_package):
    import importlib
    import importlib.util

    hooks.after_import(fake_package, _patch)
    assert importlib.util.find_spec(fake_package) is not None  # a probe, thrown away
    module = importlib.import_module(fake_package)
    assert module.Worker().run() == "patched"


def test_a_reload_is_patched_again(fake_package):
    import importlib

    hooks.after_import(fake_package, _patch)
    module = importlib.import_module(fake_package)
    module = importlib.reload(module)
    assert module.Worker().run() == "patched"
    del sys.modules[fake_package]  # a fresh import after removal too
    assert importlib.import_module(fake_package).Worker().run() == "patched"


def test_concurrent_first_imports_are_all_patched(fake_package):
    import importlib

    hooks.after_import(fake_package, _patch)
    results, barrier = [], threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(importlib.import_module(fake_package).Worker().run())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["patched"] * 8


def test_the_real_engine_worker_is_wrapped_after_a_probe():
    # The issue's reproduction: find_spec, then import, on the real verl module.
    line = _run(
        """
        import importlib.util, json
        import verl, erc_verl
        importlib.util.find_spec("verl.workers.engine_workers")
        import verl.workers.engine_workers as ew
        print(json.dumps([getattr(ew.TrainingWorker.infer_batch, "_erc_verl_plumbing", False),
                          getattr(ew.ppo_loss, "_erc_verl_plumbing", False)]))
        """
    )
    assert json.loads(line) == [True, True]


def test_import_verl_loads_only_the_core_and_the_integration():
    line = _run(
        """
        import json, sys
        import verl
        ours = sorted(n for n in sys.modules if n.startswith("erc_verl"))
        core_algos_by_plugin = "verl.trainer.ppo.core_algos" in sys.modules
        from verl.trainer.ppo import core_algos
        print(json.dumps({
            "loaded": "erc_verl" in sys.modules,
            "ours": ours,
            "core_algos_by_plugin": core_algos_by_plugin,
            "registered": "dapo_erc" in core_algos.POLICY_LOSS_REGISTRY,
            "matplotlib": "matplotlib" in sys.modules,
            "vanilla_is_verls": core_algos.get_policy_loss_fn("vanilla") is core_algos.compute_policy_loss_vanilla,
        }))
        """
    )
    found = json.loads(line)
    assert found["loaded"] and found["vanilla_is_verls"] and not found["matplotlib"]
    assert found["registered"] and not found["core_algos_by_plugin"]
    # No verl module beyond what `import verl` loads itself: registration and plumbing wait for
    # verl's own imports (benchmarks/import_cost.py measures the cost).
    allowed = {
        "erc_verl",
        "erc_verl.modes",
        "erc_verl.settings",
        "erc_verl.cpu",
        "erc_verl.cpu.hf_registry",
        "erc_verl.integration",
        "erc_verl.integration.dynamic_sampling",
        "erc_verl.integration.hooks",
        "erc_verl.integration.registry",
        "erc_verl.integration.version",
        "erc_verl.integration.verl_0_9_1",
        "erc_verl.integration.support",
        "erc_verl.integration.driver_watch",
        "erc_verl.integration.ulysses_check",
    }
    assert set(found["ours"]) <= allowed, sorted(set(found["ours"]) - allowed)


def test_cpu_platform_loads_only_when_selected():
    line = _run(
        """
        import json, sys
        import verl
        from verl.plugin.platform import PlatformRegistry
        print(json.dumps([n for n in sys.modules if n.startswith("erc_verl.cpu")]))
        """,
        {"VERL_PLATFORM": "cpu"},
    )
    assert "erc_verl.cpu.platform" in json.loads(line)


def test_v0_trainer_refuses_a_recipe_whose_dynamic_sampling_it_would_drop():
    from omegaconf import OmegaConf

    from erc_verl.integration.verl_0_9_1 import make_v0_fit, v0_trainer_problem

    ran = []
    fit = make_v0_fit(lambda self: ran.append(True))

    class Trainer:
        config = OmegaConf.create(
            {
                "algorithm": {"filter_groups": {"enable": True}},
                "trainer": {"use_v1": False},
                "actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": "dapo_erc"}}},
            }
        )

    with pytest.raises(ValueError, match="trainer.use_v1=true"):
        fit(Trainer())
    assert not ran  # refused before any step
    Trainer.config.algorithm.filter_groups.enable = False
    fit(Trainer())
    assert ran == [True] and v0_trainer_problem(Trainer.config) is None


def test_wrap_replaces_once_and_keeps_verls_function():
    import types

    from erc_verl.integration import hooks

    def verl_fn(x):
        return x

    owner = types.SimpleNamespace(__name__="fake_verl_module_for_wrap", fn=verl_fn)
    calls = []

    def make(current):
        calls.append(current)
        return lambda x: current(x) + 1

    assert hooks.wrap(owner, "fn", make, "_erc_verl_test_marker") is True
    assert hooks.wrap(owner, "fn", make, "_erc_verl_test_marker") is False  # already wrapped: left alone
    assert owner.fn(1) == 2 and calls == [verl_fn]
    assert hooks.original("fake_verl_module_for_wrap.fn") is verl_fn


def test_wrap_refuses_an_inherited_method_that_it_would_shadow():
    from erc_verl.integration import hooks

    class Base:
        def step(self):
            return "base"

    class Child(Base):
        pass

    with pytest.raises(TypeError, match="inherited from .*Base"):
        hooks.wrap(Child, "step", lambda f: f, "_erc_verl_test_marker")
    assert "step" not in vars(Child)


def test_engine_wrappers_leave_the_subclass_free_for_later_patches_of_the_base():
    """erc_verl wraps FSDPEngine.forward_backward_batch where it is defined, so a later patch of the
    base class (the smoke's layout probe) still reaches FSDPEngineWithLMHead."""
    line = _run(
        """
        import json
        import erc_verl
        from verl.workers.engine.fsdp import transformer_impl as t
        print(json.dumps(["forward_backward_batch" in vars(t.FSDPEngineWithLMHead),
                          getattr(t.FSDPEngine.forward_backward_batch, "_erc_verl_plumbing", False)]))
        """,
        {"VERL_PLATFORM": "cpu"},
    )
    assert json.loads(line) == [False, True]
