"""Where the smoke run's training ranks ran, read inside verl's worker processes from Ray.

Loaded like any verl plugin: the smoke adds this module to `VERL_USE_EXTERNAL_MODULES` in the
workers' runtime env and names an output file in `ERC_VERL_LAYOUT_PROBE`. Without that
variable, importing it installs nothing. Once verl's FSDP engine loads, it wraps
`FSDPEngine.forward_backward_batch`: every training call (one mini-batch, forward_only false)
appends one JSON line {"rank", "world_size", "node_id", "hostname", "pid", "micro_batches"}, where
node_id is `ray.get_runtime_context().get_node_id()` and micro_batches is the length of the list
verl's `prepare_micro_batches` returned for that mini-batch. `summarize()` turns the file into
layout.json's `nodes` and `micro_batches_per_mini_batch`.

The rollout engine, read inside each rollout server once its engine runs: verl's vLLM server
(`vLLMHttpServer.launch_server`, which starts the vLLM engine) or the `hf` server
(`HFRolloutServer.ready`) appends {"rollout_name", "rollout_version", "replica_rank", "node_id",
"pid"}, where the version is the engine package's as that process imported it (`vllm.__version__`,
or transformers' for `hf`). `summarize()` turns those into layout.json's `rollout_name`,
`rollout_version` and `rollout_replicas`.

Placement like a GPU cluster's (docs/rehearsal.md): with `ERC_VERL_WORKER_SLOT` set, every
bundle of verl's worker placement groups (`verl.single_controller.ray.base.placement_group`)
asks for one unit of that resource, so each node's group lands on a Ray node of its own.
"""

from __future__ import annotations

import contextvars
import functools
import os
import socket

from erc_verl.integration.hooks import after_import, wrap

from .records import append_record, read_records

ENV = "ERC_VERL_LAYOUT_PROBE"
SLOT_ENV = "ERC_VERL_WORKER_SLOT"
SLOT_RESOURCE = "erc_verl_worker_slot"
MODULE = "erc_verl.rehearsal.layout_probe"
_MARK = "_erc_verl_layout_probe"
_MICRO: contextvars.ContextVar = contextvars.ContextVar("erc_layout_micro", default=None)


def _record_rollout(name: str, version: str, replica_rank) -> None:
    import ray

    path = os.environ.get(ENV)
    if not path:
        return
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    append_record(
        path,
        {
            "rollout_name": name,
            "rollout_version": version,
            "replica_rank": replica_rank,
            "node_id": node_id,
            "pid": os.getpid(),
        },
    )


def _make_vllm_launch(launch_server):
    @functools.wraps(launch_server)
    async def wrapper(self, *args, **kwargs):
        out = await launch_server(self, *args, **kwargs)
        import vllm

        _record_rollout("vllm", vllm.__version__, getattr(self, "replica_rank", None))
        return out

    return wrapper


def _make_hf_ready(ready):
    recorded = []

    @functools.wraps(ready)
    def wrapper(self, *args, **kwargs):
        out = ready(self, *args, **kwargs)
        if not recorded:  # once per server
            import transformers

            recorded.append(True)
            _record_rollout("hf", transformers.__version__, getattr(self, "replica_rank", None))
        return out

    return wrapper


def _patch_vllm_server(module) -> None:
    wrap(module.vLLMHttpServer, "launch_server", _make_vllm_launch, _MARK)


def _patch_hf_server(module) -> None:
    wrap(module.HFRolloutServer, "ready", _make_hf_ready, _MARK)


def _record(path: str, n_micro: int | None) -> None:
    import ray
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    record = {"rank": rank, "world_size": world, "node_id": node_id, "hostname": socket.gethostname()}
    append_record(path, {**record, "pid": os.getpid(), "micro_batches": n_micro})


def _make_prepare_micro_batches(inner):
    def prepare_micro_batches(*args, **kwargs):
        out = inner(*args, **kwargs)
        box = _MICRO.get()
        if box is not None:
            box.append(len(out[0]))
        return out

    return prepare_micro_batches


def _make_forward_backward_batch(inner):
    def forward_backward_batch(self, data, loss_function, forward_only=False):
        box: list[int] = []
        token = _MICRO.set(None if forward_only else box)
        try:
            return inner(self, data, loss_function, forward_only=forward_only)
        finally:
            _MICRO.reset(token)
            if not forward_only:
                _record(os.environ[ENV], box[0] if box else None)

    return forward_backward_batch


def _patch(module) -> None:
    if os.environ.get(ENV) and getattr(module, "FSDPEngine", None) is not None:
        wrap(module, "prepare_micro_batches", _make_prepare_micro_batches, _MARK)
        wrap(module.FSDPEngine, "forward_backward_batch", _make_forward_backward_batch, _MARK)


def summarize(path) -> dict:
    """{"nodes": [{"node_id", "hostname", "ranks"}], "micro_batches_per_mini_batch", ...} from a probe file."""
    records, rollouts = [], []
    for record in read_records(path):
        (rollouts if "rollout_name" in record else records).append(record)
    engines = sorted({(r["rollout_name"], r["rollout_version"]) for r in rollouts})
    nodes: dict[str, dict] = {}
    for r in records:
        node = nodes.setdefault(r["node_id"], {"node_id": r["node_id"], "hostname": r["hostname"], "ranks": set()})
        node["ranks"].add(r["rank"])
    micro = sorted({r["micro_batches"] for r in records if r.get("micro_batches") is not None})
    return {
        "nodes": sorted(({**n, "ranks": sorted(n["ranks"])} for n in nodes.values()), key=lambda n: n["ranks"]),
        "world_size_seen": max((r["world_size"] for r in records), default=None),
        # One value when every mini-batch of every rank had the same count (dynamic batch sizes may vary).
        "micro_batches_per_mini_batch": micro[0] if len(micro) == 1 else (micro or None),
        "mini_batches_recorded": len(records),
        # One engine (name, version) for the whole run, else the list; None when no server recorded.
        "rollout_name": (engines[0][0] if len(engines) == 1 else [e[0] for e in engines]) if engines else None,
        "rollout_version": (engines[0][1] if len(engines) == 1 else [e[1] for e in engines]) if engines else None,
        "rollout_replicas": len({(r["replica_rank"], r["pid"]) for r in rollouts}),
    }


def _make_placement_group(inner):
    def placement_group(bundles, *args, **kwargs):
        return inner([{**b, os.environ[SLOT_ENV]: 1} for b in bundles], *args, **kwargs)

    return placement_group


def _patch_placement(module) -> None:
    if os.environ.get(SLOT_ENV) and getattr(module, "placement_group", None) is not None:
        wrap(module, "placement_group", _make_placement_group, _MARK)


if os.environ.get(ENV):
    after_import("verl.workers.engine.fsdp.transformer_impl", _patch)
    after_import("verl.workers.rollout.vllm_rollout.vllm_async_server", _patch_vllm_server)
    after_import("erc_verl.cpu.rollout", _patch_hf_server)
if os.environ.get(SLOT_ENV):
    after_import("verl.single_controller.ray.base", _patch_placement)
