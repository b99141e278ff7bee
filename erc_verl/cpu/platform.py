"""A CPU platform for verl 0.9.x, so its real FSDP engine can run in one CPU process.

verl resolves its hardware platform once per process (``verl.plugin.platform.get_platform``)
and looks the training engine up by device name in ``EngineRegistry``. Stock verl ships only
accelerator platforms and registers the FSDP engines for ``cuda``/``npu``. This module adds a
``cpu`` platform (device ``cpu``, backend ``gloo``) and registers the stock FSDP engines for
device ``cpu`` too, without touching verl's files.

Select it with ``VERL_PLATFORM=cpu`` set *before* anything in verl first calls
``get_platform()`` (the choice is cached for the life of the process), then call
:func:`register_cpu_platform`. ``harness.training_worker`` does both for you.

This is for tests, the CPU demo and the overhead benchmark; it is never needed on a GPU box.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any

import psutil
import torch

from erc_verl.integration.hooks import after_import, wrap

PLATFORM_NAME = "cpu"


# Calls verl makes on the device module that have a fixed answer on CPU: there is no device
# allocator to ask, so the memory counters read 0 and cache/peak/fraction calls do nothing.
_FIXED_CALLS = {
    **dict.fromkeys(("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"), 0),
    **dict.fromkeys(("empty_cache", "ipc_collect", "reset_peak_memory_stats", "set_per_process_memory_fraction"), None),
    "get_device_name": "cpu",
}


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on ``get_torch_device()``.

    ``torch.cpu`` lacks calls like ``max_memory_allocated()``, ``mem_get_info()`` and
    ``get_rng_state()``; those in _FIXED_CALLS return their fixed answer, everything else not
    defined here falls through to ``torch.cpu``.
    """

    def __getattr__(self, name: str) -> Any:
        if name in _FIXED_CALLS:
            value = _FIXED_CALLS[name]
            return lambda *args, **kwargs: value
        return getattr(torch.cpu, name)

    @staticmethod
    def mem_get_info(device=None) -> tuple[int, int]:
        vm = psutil.virtual_memory()
        return vm.available, vm.total

    # RNG: the CPU generator is the global torch one
    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, device=None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed


_DEVICE_MODULE = _CPUDeviceModule("erc_verl_cpu_device")


def _platform_class():
    # Built lazily so importing this module does not import verl.
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for plain CPU: device ``cpu``, collectives over ``gloo``."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return _DEVICE_MODULE

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            # Never auto-detected: only an explicit VERL_PLATFORM=cpu selects it, so a GPU
            # box that merely imports this module keeps its accelerator platform.
            return False

        def current_device(self):
            # verl does ``tensor.to(get_device_id())``; "cpu" is the only valid target here.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            # Worker.__init__ reads and writes this variable; a name nothing else uses.
            return "ERC_VERL_CPU_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_cpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def _cpu_selected() -> bool:
    """True when this process has picked (or is about to pick) the CPU platform."""
    from verl.plugin.platform import platform_manager

    current = platform_manager._current_platform
    if current is not None:
        return current.device_name == "cpu"
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def _register_cpu_engines() -> None:
    # Importing transformer_impl resolves the platform (module-level get_device_name()),
    # so this only runs once the CPU platform is the one selected.
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    for model_type, engine_cls in (
        ("language_model", FSDPEngineWithLMHead),
        ("value_model", FSDPEngineWithValueHead),
    ):
        for backend in ("fsdp", "fsdp2"):
            registry = EngineRegistry._engines.setdefault(model_type, {}).setdefault(backend, {})
            # EngineRegistry.register asserts on duplicates; check first to stay idempotent.
            if "cpu" not in registry:
                EngineRegistry.register(model_type=model_type, backend=backend, device="cpu")(engine_cls)


def _register_platform_class() -> None:
    from verl.plugin.platform import PlatformRegistry

    existing = PlatformRegistry.get(PLATFORM_NAME)
    if existing is None or not getattr(existing, "_erc_verl_cpu", False):
        cls = _platform_class()
        cls._erc_verl_cpu = True
        PlatformRegistry.register(platform=PLATFORM_NAME)(cls)


def register_cpu_platform() -> bool:
    """Register the ``cpu`` platform and, if it is the selected one, the FSDP engines for it.

    Safe to call any number of times. Returns True when the CPU platform is selected in this
    process (``VERL_PLATFORM=cpu``, or already resolved to cpu) and the engines are registered;
    False when only the platform class was registered (another platform is in use).
    """
    _register_platform_class()
    if not _cpu_selected():
        return False
    _register_cpu_engines()
    return True


def install_if_selected() -> bool:
    """At plugin load: when VERL_PLATFORM=cpu, make verl able to resolve it in this process.

    Registers the platform class now (cheap) and the CPU engines right after verl imports its
    FSDP engine module, so a process (or Ray worker) started with VERL_PLATFORM=cpu works
    without calling register_cpu_platform() itself. Does nothing otherwise.
    """
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != PLATFORM_NAME:
        return False
    try:
        import verl.plugin.platform  # noqa: F401
    except ImportError:  # a verl without platform plugins (0.7.1, patched): nothing to register
        return False
    _register_platform_class()
    after_import("verl.workers.engine.fsdp.transformer_impl", _register_engines_after_import)
    # verl's Ulysses covers flash attention only; the CPU runs sdpa (see erc_verl/cpu/ulysses.py).
    after_import("verl.models.transformers.monkey_patch", _install_ulysses_sdpa)
    after_import("verl.utils.ulysses", _install_ulysses_all_to_all)
    install_trainer_support()
    # verl's own vLLM rollout with vLLM's CPU build (erc_verl/cpu/vllm_hooks.py); lazy like the rest.
    from .vllm_hooks import install as _install_vllm_hooks

    _install_vllm_hooks()
    return True


def _register_engines_after_import(module) -> None:
    register_cpu_platform()


def _install_ulysses_sdpa(module) -> None:
    from .ulysses import install

    install()


def _install_ulysses_all_to_all(module) -> None:
    from .ulysses import install_all_to_all

    install_all_to_all(module)


# ----------------------------------------------------------------------------------------
# what verl's Ray trainer (main_ppo) needs besides the platform, only with VERL_PLATFORM=cpu
# ----------------------------------------------------------------------------------------


def _cpu_backend(backend: str | None) -> str | None:
    """verl builds "cpu:gloo,{device}:{backend}"; on the CPU platform that is "cpu:gloo,cpu:gloo",
    which torch rejects (a device type listed twice). The CPU platform wants plain "gloo"."""
    if backend is None:
        return "gloo"
    parts = [p.strip() for p in str(backend).split(",") if p.strip()]
    if parts and all(p.split(":")[0] == "cpu" for p in parts):
        return "gloo"
    return backend


_MARK = "_erc_verl_cpu"


def _make_init_ray(ray_init):
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if not _cpu_selected():
            return ray_init(timeout_second=timeout_second, backend=backend)
        from verl.utils.device import get_device_name, get_nccl_backend

        default = f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"
        return ray_init(timeout_second=timeout_second, backend=_cpu_backend(backend or default))

    return initialize_global_process_group_ray


def _make_init(plain_init):
    def initialize_global_process_group(timeout_second=36000):
        if not _cpu_selected():
            return plain_init(timeout_second=timeout_second)
        from datetime import timedelta

        torch.distributed.init_process_group(
            backend="gloo", timeout=timedelta(seconds=timeout_second), init_method=os.environ.get("DIST_INIT_METHOD")
        )
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    return initialize_global_process_group


def _patch_distributed(module) -> None:
    """verl/utils/distributed.py, initialize_global_process_group{,_ray}: see _cpu_backend."""
    wrap(module, "initialize_global_process_group_ray", _make_init_ray, _MARK)
    wrap(module, "initialize_global_process_group", _make_init, _MARK)


def _rebind_distributed(module) -> None:
    """Modules that did `from verl.utils.distributed import initialize_global_process_group_ray`."""
    import verl.utils.distributed as dist

    for name in ("initialize_global_process_group_ray", "initialize_global_process_group"):
        if hasattr(module, name) and getattr(dist, name, None) is not None:
            setattr(module, name, getattr(dist, name))


def _make_resource_check(verl_check):
    """verl/single_controller/ray/base.py, ResourcePoolManager._check_resource_available counts
    only GPU/NPU resources ("Total available GPUs 0 is less than total desired GPUs 1"); on the
    CPU platform the pools' bundles hold Ray CPUs, so count those instead."""

    def _check_resource_available(self):
        if not _cpu_selected():
            return verl_check(self)
        import ray

        available = sum(node.get("CPU", 0) for node in ray._private.state.available_resources_per_node().values())
        required = sum(n for nodes in self.resource_pool_spec.values() for n in nodes)
        if available < required:
            raise ValueError(
                f"CPU platform: {available:g} Ray CPUs available, {required} worker slots wanted; "
                "start Ray with more logical CPUs (ray_kwargs.ray_init.num_cpus)"
            )

    return _check_resource_available


def _patch_resource_check(module) -> None:
    wrap(module.ResourcePoolManager, "_check_resource_available", _make_resource_check, _MARK)


def install_trainer_support() -> None:
    """Let verl's Ray trainer (main_ppo) start on the CPU platform. Idempotent, lazy."""
    after_import("verl.utils.distributed", _patch_distributed)
    for name in ("verl.workers.engine_workers", "verl.workers.fsdp_workers"):
        after_import(name, _rebind_distributed)
    after_import("verl.single_controller.ray.base", _patch_resource_check)
    # separate_async's cycle-start weights: a real copy on CPU (erc_verl/cpu/sharded_save.py)
    from .sharded_save import install as _copy_saved_weights

    _copy_saved_weights()
