"""`cpu_ray`: a checkpoint-engine backend for verl 0.9.1 on the CPU platform (weights through Ray).

verl's `separate_async` trainer syncs the trainer's weights to its standalone rollout replicas
through a checkpoint engine other than `naive` (verl/trainer/ppo/v1/trainer_separate_async.py,
line 68 asserts it); verl 0.9.1's engines (nccl, hccl, nixl, mooncake, kimi, delta) all need an
accelerator or an RDMA stack. This one moves the weights through Ray's object store:

* `prepare` (actor rank 0): start a mailbox, a named Ray actor with no CPU reservation;
  `build_topology` hands its name to every actor and rollout worker;
* `send_weights` (every actor rank drains verl's generator, which may gather shards; rank 0
  copies the full tensors and puts them in the mailbox once);
* `receive_weights` (each rollout worker's CheckpointEngineWorker): waits for them in the
  mailbox and yields (name, tensor) pairs to the server adapter
  (erc_verl/cpu/rollout.py `HFServerAdapter.update_weights`);
* `finalize` (actor rank 0): the mailbox is killed.

Selected with `actor_rollout_ref.rollout.checkpoint_engine.backend=cpu_ray` and
`actor_rollout_ref.rollout.checkpoint_engine.custom_backend_module=erc_verl.cpu.checkpoint_engine`:
verl imports that module where it builds engines (verl/checkpoint_engine/base.py lines 336 and
417, verl/workers/engine_workers.py line 685), and importing it registers the backend with
verl's `CheckpointEngineRegistry`. The smoke run sets both for `separate_async`
(erc_verl/rehearsal/overrides.py). Only on the CPU platform (VERL_PLATFORM=cpu): on GPUs verl's
nccl backend is the one to use.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import ray
from verl.checkpoint_engine.base import CheckpointEngine, CheckpointEngineRegistry
from verl.workers.rollout.utils import ensure_async_iterator

BACKEND = "cpu_ray"
MODULE = "erc_verl.cpu.checkpoint_engine"

if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
    raise ImportError(
        f"checkpoint_engine.backend={BACKEND} ({MODULE}) is erc_verl's CPU-platform backend, for smoke runs "
        "with VERL_PLATFORM=cpu; on GPUs set actor_rollout_ref.rollout.checkpoint_engine.backend=nccl"
    )


@ray.remote(num_cpus=0)
class _Mailbox:
    """One weight update: put once by the trainer's rank 0, read by every rollout worker."""

    def __init__(self):
        self._event = asyncio.Event()
        self._weights = None

    async def put(self, weights: dict, global_steps) -> None:
        self._weights = (weights, global_steps)
        self._event.set()

    async def take(self):
        await self._event.wait()
        return self._weights


@CheckpointEngineRegistry.register(BACKEND)
class RayObjectStoreCheckpointEngine(CheckpointEngine):
    """Trainer -> rollout weights through a Ray actor and the object store (CPU, small models)."""

    def __init__(self, bucket_size: int = 0, is_master: bool = False, **kwargs) -> None:
        self.is_master = is_master
        self._mailbox = None
        self._mailbox_name = None

    def prepare(self) -> dict:
        if not self.is_master:
            return {}
        name = f"erc_verl_cpu_weights_{uuid.uuid4().hex}"
        self._mailbox = _Mailbox.options(name=name).remote()
        return {"mailbox": name}

    @classmethod
    def build_topology(cls, actor_wg_world_size: int, rollout_world_size: int, metadata: list[dict]):
        names = {m["mailbox"] for m in metadata if m and "mailbox" in m}
        if len(names) != 1:
            raise RuntimeError(f"{BACKEND}: expected one mailbox from the trainer's rank 0, got {sorted(names)}")
        (name,) = names
        return {"mailbox": [name] * actor_wg_world_size}, {"mailbox": [name] * rollout_world_size}

    def init_process_group(self, mailbox: str, **kwargs) -> None:
        self._mailbox_name = mailbox

    def finalize(self) -> None:
        if self.is_master and self._mailbox is not None:
            ray.kill(self._mailbox)
        self._mailbox = None
        self._mailbox_name = None

    async def send_weights(self, weights, global_steps: int | None = None):
        named = {}
        async for name, tensor in ensure_async_iterator(weights):
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if self.is_master:
                named[name] = tensor.detach().to("cpu", copy=True).contiguous()
        if self.is_master:
            await ray.get_actor(self._mailbox_name).put.remote(named, global_steps)
        return {}

    async def receive_weights(self, global_steps: int | None = None):
        named, _ = await ray.get_actor(self._mailbox_name).take.remote()
        for item in named.items():
            yield item
