"""The plugin reaches Ray worker processes through verl's own loading mechanisms.

Registration done in the driver does not travel to Ray workers; each worker process imports
verl, and verl imports the plugin (the `verl.plugins` entry point, or VERL_USE_EXTERNAL_MODULES).
The workers here are started with verl's PPO runtime environment, as main_ppo starts them.
"""

import os

import pytest

ray = pytest.importorskip("ray")

from harness.private_ray import private_ray  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    runtime_env = get_ppo_ray_runtime_env()
    # Workers must not inherit the test process's own registration through an environment leak.
    runtime_env.setdefault("env_vars", {}).pop("VERL_USE_EXTERNAL_MODULES", None)
    with private_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env):
        yield


@ray.remote(num_cpus=0)
class Probe:
    """Does in a fresh worker process what verl's actor worker does on start: import verl."""

    def report(self):
        import sys

        import verl  # noqa: F401  (the plugin is loaded here, or not at all)
        from verl.trainer.ppo import core_algos

        loaded = "erc_verl" in sys.modules
        out = {"pid": os.getpid(), "loaded": loaded, "modes": sorted(core_algos.POLICY_LOSS_REGISTRY)}
        import verl.workers.engine_workers as engine_workers

        out["plumbing"] = bool(getattr(engine_workers.ppo_loss, "_erc_verl_plumbing", False))
        try:
            core_algos.get_policy_loss_fn("dapo_erc")
            out["lookup"] = "ok"
        except Exception as err:  # the loud failure a run without the plugin must hit
            out["lookup"] = f"{type(err).__name__}: {err}"
        return out

    def build_erc_policy_loss_config(self):
        """What init_model does with the actor config: omega_conf_to_dataclass on its policy_loss."""
        import sys

        from omegaconf import OmegaConf
        from verl.trainer.ppo import core_algos
        from verl.utils.config import omega_conf_to_dataclass

        before = "erc_verl" in sys.modules
        cfg = omega_conf_to_dataclass(
            OmegaConf.create({"_target_": "erc_verl.ERCPolicyLossConfig", "loss_mode": "dapo_erc"})
        )
        import verl.workers.engine_workers as engine_workers

        return {
            "loaded_before": before,
            "config": type(cfg).__name__,
            "registered": "dapo_erc" in core_algos.POLICY_LOSS_REGISTRY,
            "plumbing": bool(getattr(engine_workers.ppo_loss, "_erc_verl_plumbing", False)),
        }


def probe(env_vars, method="report"):
    # Another test module in the session may have selected erc_verl's CPU platform for itself
    # (VERL_PLATFORM=cpu); a worker started by verl on a GPU-less node sees verl's default.
    env_vars = {"VERL_PLATFORM": "nvidia", **env_vars}
    actor = Probe.options(runtime_env={"env_vars": env_vars}).remote()
    try:
        return ray.get(getattr(actor, method).remote(), timeout=300)
    finally:
        ray.kill(actor)


@pytest.mark.slow
def test_entry_point_loads_plugin_in_worker(ray_cluster):
    out = probe({"VERL_USE_EXTERNAL_PLUGINS": "auto"})
    assert out["pid"] != os.getpid()
    assert out["loaded"] and out["plumbing"] and out["lookup"] == "ok"
    assert {"dapo_erc", "gppo", "gppo_erc"} <= set(out["modes"])


@pytest.mark.slow
def test_external_modules_variable_loads_plugin_in_worker(ray_cluster):
    # Entry points off: only verl's VERL_USE_EXTERNAL_MODULES can bring the plugin in.
    out = probe({"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "erc_verl"})
    assert out["loaded"] and out["plumbing"] and out["lookup"] == "ok"
    assert {"dapo_erc", "gppo", "gppo_erc"} <= set(out["modes"])


@pytest.mark.slow
def test_worker_without_plugin_fails_loudly(ray_cluster):
    out = probe({"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert not out["loaded"]
    assert "dapo_erc" not in out["modes"]
    assert out["lookup"].startswith("ValueError") and "dapo_erc" in out["lookup"]


@pytest.mark.slow
def test_erc_config_target_alone_loads_plugin_in_worker(ray_cluster):
    # Neither mechanism on: building the ERC policy-loss config (as init_model does) imports it.
    out = probe({"VERL_USE_EXTERNAL_PLUGINS": "none"}, method="build_erc_policy_loss_config")
    assert out == {"loaded_before": False, "config": "ERCPolicyLossConfig", "registered": True, "plumbing": True}
