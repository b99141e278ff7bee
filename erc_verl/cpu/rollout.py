"""`hf`: a CPU rollout backend for verl 0.9.1, generating with HF transformers.

verl's trainer talks to its rollout through two extension points, and this module fills both:

* a *replica* (``verl.workers.rollout.replica.RolloutReplicaRegistry``): the trainer's
  ``LLMServerManager`` builds one per rollout world, and its ``launch_servers`` starts the
  server actor that verl's agent loop sends token-in/token-out ``generate`` calls to
  (``HFReplica`` -> ``HFRolloutServer``);
* a *server adapter* (``verl.workers.rollout.base._ROLLOUT_REGISTRY``): built inside each
  actor worker process, it receives the actor's weights after every update through verl's own
  weight-sync path (sync trainer: checkpoint_engine backend ``naive`` ->
  ``ActorRolloutRefWorker.update_weights`` -> ``BaseRollout.update_weights``) and ships them
  to the server actor through Ray's object store (``HFServerAdapter``). A standalone replica
  (``separate_async``) gets them through a checkpoint engine instead, in its own
  ``CheckpointEngineWorker`` (erc_verl/cpu/checkpoint_engine.py on CPU).

Select it with ``actor_rollout_ref.rollout.name=hf``. erc_verl registers both entries lazily
(erc_verl/cpu/hf_registry.py); this module, with torch and transformers, is imported only
when a config selects ``hf``. Nothing here imports vLLM or SGLang.

What the server honours from verl's request: ``temperature`` (0 = greedy), ``top_p``,
``top_k`` (-1/0 = off), ``max_tokens``/``max_new_tokens`` (else the configured response
length, capped by the context), ``logprobs`` (per-token log-probs of the sampled tokens under
``softmax(logits / T)``, the distribution verl's actor scores with), ``ignore_eos``, and stops at
the model's EOS ids. Validation's ``val_kwargs`` reach it the same way: verl's agent loop puts
them into ``sampling_params``. Concurrent requests with the same sampling settings are batched
into one left-padded generation with a KV cache.

LoRA: with verl's adapter sync (model.lora.merge=false) the server gets the base weights once
(or keeps the model folder's) and then each step's adapter, and serves base + adapter merged into
its weights (lora_merged_weights); with model.lora.merge=true the actor sends merged weights.

It is a smoke-test and demo backend for small models on CPU, not a serving engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Generator
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

from ..settings import select

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
SERVER_NAME_PREFIX = "erc_verl_hf_rollout"


def server_actor_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray actor name of a replica's server; the adapter in the actor process looks it up."""
    return f"{SERVER_NAME_PREFIX}_{replica_rank}{suffix}"


def _model_path(model_config) -> str:
    path = select(model_config, "local_path") or select(model_config, "path")
    if path is None:
        raise ValueError("hf rollout: model config has no path")
    if not os.path.isdir(str(path)):
        from verl.utils.fs import copy_to_local

        path = copy_to_local(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------


def _sampling_key(params: dict) -> tuple:
    temperature = float(params.get("temperature", 1.0) or 0.0)
    top_p = float(params.get("top_p", 1.0) if params.get("top_p") is not None else 1.0)
    top_k = int(params.get("top_k", -1) if params.get("top_k") is not None else -1)
    return (temperature, top_p, top_k, bool(params.get("ignore_eos", False)))


def request_generator(seed: int, global_steps, sample, prompt_ids: list[int]):
    """A generator seeded from the request itself, or None when the request carries no sample index.

    ``sample`` is the request's place in its group of responses (verl's ``session_id``, 0..n-1,
    passed on by erc_verl/cpu/hf_registry.py). The seed mixes the run's seed, the training
    step, that index and the prompt's tokens, none of which depends on how many replicas there
    are or which one serves the request, so a recipe samples the same responses for any number
    of replicas. (The same prompt twice in one step's batch samples alike.)
    """
    if sample is None:
        return None
    key = f"{seed}|{global_steps}|{sample}|{','.join(map(str, prompt_ids))}"
    digest = hashlib.sha256(key.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator=None):
    """Sample one token per row; returns (tokens, log-probs under softmax(logits / T)).

    ``generator`` is one torch.Generator for the whole batch, or a list with one per row.
    T = 0 is greedy, scored under softmax(logits). top_k <= 0 and top_p >= 1 switch those cuts off;
    the log-prob is always taken from the uncut tempered distribution (what verl's actor computes).
    """
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    scaled = logits / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    cut = scaled.clone()
    if top_k is not None and top_k > 0 and top_k < cut.shape[-1]:
        kth = torch.topk(cut, top_k, dim=-1).values[:, -1:]
        cut = cut.masked_fill(cut < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(cut, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        cut = torch.full_like(cut, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(cut, dim=-1)
    if isinstance(generator, (list, tuple)):
        # One generator per row: a sample does not depend on which requests share its batch.
        tokens = torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)[:, 0] for i, g in enumerate(generator)])
    else:
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def generate_batch(
    model,
    prompts: list[list[int]],
    max_tokens: list[int],
    *,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_ids: set[int],
    pad_id: int,
    ignore_eos: bool = False,
    generator=None,
) -> list[tuple[list[int], list[float], str]]:
    """Left-padded batched sampling with a KV cache. Returns (tokens, log-probs, finish) per prompt."""
    bsz = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    attn = torch.zeros((bsz, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p) :] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long) if eos_ids else None
    done = torch.zeros(bsz, dtype=torch.bool)
    limit = torch.tensor(max_tokens, dtype=torch.long)
    tokens: list[list[int]] = [[] for _ in range(bsz)]
    logps: list[list[float]] = [[] for _ in range(bsz)]
    finish = ["length"] * bsz
    last_pos = pos[:, -1:]
    for step in range(max(max_tokens)):
        tok, lp = sample_next(logits, temperature, top_p, top_k, generator)
        for i in range(bsz):
            if not done[i]:
                tokens[i].append(int(tok[i]))
                logps[i].append(float(lp[i]))
        hit_eos = torch.isin(tok, eos) if (eos is not None and not ignore_eos) else torch.zeros_like(done)
        for i in torch.nonzero(hit_eos & ~done).flatten().tolist():
            finish[i] = "stop"
        done = done | hit_eos | (limit <= step + 1)
        if bool(done.all()):
            break
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        attn = torch.cat([attn, torch.ones((bsz, 1), dtype=attn.dtype)], dim=-1)
        last_pos = last_pos + 1
        out = model(
            input_ids=tok[:, None], attention_mask=attn, position_ids=last_pos, past_key_values=past, use_cache=True
        )
        past, logits = out.past_key_values, out.logits[:, -1, :]
    return [(tokens[i], logps[i], finish[i]) for i in range(bsz)]


# ----------------------------------------------------------------------------------------
# LoRA adapters
# ----------------------------------------------------------------------------------------

_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"


def _lora_module(key: str) -> str:
    """The model's module name of an adapter tensor's key (PEFT's `base_model.model.` prefix and
    adapter name removed)."""
    for suffix in (_LORA_A, _LORA_B):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    else:
        raise ValueError(
            f"hf rollout: {key!r} is not a LoRA A or B matrix (only plain LoRA on linear layers is served)"
        )
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.removesuffix(".default")


def lora_target_weights(adapter: dict) -> set[str]:
    """The model weights an adapter changes."""
    return {_lora_module(key) + ".weight" for key in adapter}


def lora_merged_weights(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], peft_config: dict):
    """W = W_base + s * B @ A for every module of the adapter, s = lora_alpha / r (lora_alpha / sqrt(r)
    with rsLoRA): what PEFT's LoRA layer computes, x W_base^T + s * x A^T B^T, in one matrix.

    Refused (one line naming the fix): DoRA, per-module ranks or alphas, trained biases or extra
    modules, an A without its B.
    """
    unsupported = [
        name
        for name, off in (
            ("use_dora", not peft_config.get("use_dora")),
            ("rank_pattern", not peft_config.get("rank_pattern")),
            ("alpha_pattern", not peft_config.get("alpha_pattern")),
            ("modules_to_save", not peft_config.get("modules_to_save")),
            ("bias", peft_config.get("bias", "none") in (None, "none")),
        )
        if not off
    ]
    if unsupported:
        raise NotImplementedError(
            f"hf rollout: LoRA with {', '.join(unsupported)} is not served; fix: plain LoRA, or "
            "actor_rollout_ref.model.lora.merge=true (the actor then sends merged weights)"
        )
    rank, alpha = int(peft_config["r"]), float(peft_config["lora_alpha"])
    scale = alpha / rank**0.5 if peft_config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict] = {}
    for key, tensor in adapter.items():
        pairs.setdefault(_lora_module(key), {})["A" if key.endswith(_LORA_A) else "B"] = tensor
    merged = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"hf rollout: LoRA adapter of {module} lacks its {'B' if 'A' in ab else 'A'} matrix")
        weight = base[module + ".weight"]
        delta = ab["B"].float() @ ab["A"].float()
        merged[module + ".weight"] = (weight.float() + scale * delta).to(weight.dtype)
    return merged


# ----------------------------------------------------------------------------------------
# the server actor
# ----------------------------------------------------------------------------------------


class HFRolloutServer:
    """Token-in/token-out generation server (a Ray actor) holding one HF model on CPU."""

    def __init__(self, config, model_config, replica_rank: int = 0, seed: int | None = None):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.config = config
        self.replica_rank = replica_rank
        path = _model_path(model_config)
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        self.model.eval()
        eos = set()
        try:
            gen = GenerationConfig.from_pretrained(path)
            gen_eos = gen.eos_token_id
            eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
            pad = gen.pad_token_id
        except OSError:
            pad = None
        cfg_eos = self.model.config.eos_token_id
        eos.update(cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos] if cfg_eos is not None else [])
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
            if tok.eos_token_id is not None:
                eos.add(int(tok.eos_token_id))
            if pad is None:
                pad = tok.pad_token_id
        except Exception:  # a model folder without a tokenizer: the configs' ids are enough
            pass
        self.eos_ids = {int(e) for e in eos if e is not None}
        self.pad_id = int(pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0))
        self.prompt_length = int(select(config, "prompt_length", 512) or 512)
        self.response_length = int(select(config, "response_length", 512) or 512)
        self.max_model_len = int(select(config, "max_model_len", None) or (self.prompt_length + self.response_length))
        seed = int(select(config, "seed", 0) or 0) if seed is None else int(seed)
        self.seed = seed
        # Requests without a sample index draw from the replica's own stream (request_generator).
        self.generator = torch.Generator().manual_seed(seed + 1000 * int(replica_rank))
        self.global_steps: int | None = None
        self.weight_version = 0
        # Held while a batch generates and while weights load: in the asynchronous trainers a
        # weight update arrives while requests run, and one response must come from one version.
        self._weights_lock = threading.Lock()
        # The base weights of the modules a LoRA adapter changes, kept from the first adapter on.
        self._lora_base: dict[str, torch.Tensor] | None = None
        self._queue: list[tuple[list[int], dict, int, asyncio.Future, torch.Generator]] = []
        self._batcher: asyncio.Task | None = None
        self._lock = None

    def ready(self) -> bool:
        return True

    # --- generation ----------------------------------------------------------------------

    def _max_tokens(self, prompt_ids: list[int], params: dict) -> int:
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"hf rollout: prompt of {len(prompt_ids)} tokens leaves no room within max_model_len={self.max_model_len}"
            )
        if "max_tokens" in params:
            max_tokens = int(params["max_tokens"])
        elif "max_new_tokens" in params:
            max_tokens = int(params["max_new_tokens"])
        else:
            max_tokens = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        return max(1, min(max_tokens, room))

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str = "",
        image_data=None,
        video_data=None,
        erc_sample: int | None = None,
        **kwargs,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None:
            raise NotImplementedError("hf rollout: multimodal inputs are not supported")
        params = dict(sampling_params or {})
        prompt_ids = [int(t) for t in prompt_ids]
        max_tokens = self._max_tokens(prompt_ids, params)
        fut = asyncio.get_running_loop().create_future()
        gen = request_generator(self.seed, self.global_steps, erc_sample, prompt_ids) or self.generator
        self._queue.append((prompt_ids, params, max_tokens, fut, gen))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._drain())
        tokens, logps, finish, version, global_steps = await fut
        # The version the response was generated with (verl's staleness metrics read global_steps).
        extra = {"global_steps": global_steps, "weight_version": version}
        return TokenOutput(
            token_ids=tokens,
            log_probs=logps if params.get("logprobs") else None,
            stop_reason="completed" if finish in ("stop", "length") else finish,
            extra_fields=extra,
        )

    async def _drain(self):
        # let the agent loop's concurrent requests arrive, then serve them in batches
        while self._queue:
            for _ in range(3):
                await asyncio.sleep(0.005)
            batch, self._queue = self._queue, []
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(_sampling_key(item[1]), []).append(item)
            for key, items in groups.items():
                temperature, top_p, top_k, ignore_eos = key
                try:
                    results = await asyncio.to_thread(
                        self._generate_locked,
                        [it[0] for it in items],
                        [it[2] for it in items],
                        temperature=temperature,
                        top_p=top_p,
                        top_k=top_k,
                        eos_ids=self.eos_ids,
                        pad_id=self.pad_id,
                        ignore_eos=ignore_eos,
                        generator=[it[4] for it in items],
                    )
                except Exception as err:  # hand the failure to every waiting request
                    for it in items:
                        if not it[3].done():
                            it[3].set_exception(err)
                    continue
                for it, res in zip(items, results, strict=True):
                    if not it[3].done():
                        it[3].set_result(res)

    def _generate_locked(self, *args, **kwargs):
        """generate_batch with the weights held fixed; each result also names their version."""
        with self._weights_lock:
            version, global_steps = self.weight_version, self.global_steps
            return [(*r, version, global_steps) for r in generate_batch(self.model, *args, **kwargs)]

    # --- weights -------------------------------------------------------------------------

    def load_weights(
        self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None, base: bool = True
    ) -> dict:
        """Copy the actor's tensors into the model once no batch is generating; returns what was (not)
        matched. base: they are the weights a LoRA adapter is added to (any earlier copy of the base is
        dropped)."""
        with self._weights_lock:
            if base:
                self._lora_base = None
            return self._load_weights(named_tensors, global_steps)

    def _load_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None) -> dict:
        state = self.model.state_dict()
        loaded, unknown = [], []
        with torch.no_grad():
            for name, tensor in named_tensors.items():
                if name not in state:
                    unknown.append(name)
                    continue
                state[name].copy_(tensor.to(state[name].dtype))
                loaded.append(name)
        if unknown:
            raise KeyError(f"hf rollout: actor weights not in the rollout model: {unknown[:5]}")
        self.weight_version += 1
        if global_steps is not None:
            self.global_steps = global_steps
        missing = sorted(set(state) - set(loaded))
        return {"loaded": len(loaded), "missing": missing, "version": self.weight_version}

    def load_adapter(self, adapter: dict[str, torch.Tensor], peft_config: dict, global_steps: int | None = None):
        """Serve a LoRA adapter: the model's weights become base + adapter (lora_merged_weights)."""
        if self._lora_base is None:  # the model holds the base: loaded from the model folder or a base sync
            state = self.model.state_dict()
            self._lora_base = {k: v.detach().clone() for k, v in state.items() if k in lora_target_weights(adapter)}
        return self.load_weights(lora_merged_weights(self._lora_base, adapter, peft_config), global_steps, base=False)

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # --- the control calls verl makes on every server (nothing to free on CPU) ------------

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def wake_up(self, tags=None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True):
        return {}

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


# ----------------------------------------------------------------------------------------
# the replica (trainer side) and the adapter (actor-worker side)
# ----------------------------------------------------------------------------------------


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica, next to the (hybrid) actor workers."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    def _name(self) -> str:
        role = "_reward" if self.is_reward_model else "_teacher" if self.is_teacher_model else ""
        return server_actor_name(self.replica_rank, role + self.name_suffix)

    async def launch_servers(self):
        if self.rollout_mode not in (RolloutMode.HYBRID, RolloutMode.COLOCATED, RolloutMode.STANDALONE):
            raise ValueError(f"hf rollout: unsupported rollout mode {self.rollout_mode}")
        name = self._name()
        options = dict(name=name, num_cpus=0, max_concurrency=self.max_concurrency)
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=True
            )
        server = (
            ray.remote(HFRolloutServer)
            .options(**options)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-cpu://{name}"


class HFServerAdapter(BaseRollout):
    """Forwards the actor's weights to its replica's server.

    Built in two places: in each actor worker for the replicas beside it (hybrid; no
    replica_rank given, so it follows from the worker's RANK), and in the CheckpointEngineWorker
    of a standalone or colocated replica, where verl passes the replica's own rank
    (verl/workers/rollout/replica.py, `get_ray_class_with_init_args`): a standalone replica's rank
    starts after the hybrid ones (trainer_separate_async.py, `start_rank`), so it must be honoured.
    """

    def __init__(self, config, model_config, device_mesh, *args, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank is None or int(replica_rank) < 0 else int(replica_rank)
        self.is_leader = rank % world == 0
        self.sleep_level = 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        wire_format: str = "named_tensors",
        **kwargs,
    ):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout: weight wire format {wire_format!r} is not supported")
        from verl.workers.rollout.utils import ensure_async_iterator

        peft_config = kwargs.get("peft_config")
        named = {}
        # verl's naive sync hands a generator, a checkpoint engine (erc_verl/cpu/checkpoint_engine.py)
        # an async one; every rank must drain it (it may gather).
        async for name, tensor in ensure_async_iterator(weights):
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if self.is_leader:
                named[name] = tensor.detach().to("cpu", copy=True).contiguous()
        if not self.is_leader:
            return None
        # Ray moves the tensors through its object store (no GPU, no IPC handles, no NCCL).
        server, steps = self._server_handle(), kwargs.get("global_steps")
        if peft_config is None:  # full weights (LoRA merged by the actor with model.lora.merge=True)
            return await server.load_weights.remote(named, steps)
        if not kwargs.get("base_sync_done", True):
            # LoRA's base weights, named as verl names them for a LoRA-aware engine (`<module>.base_layer.weight`).
            return await server.load_weights.remote({k.replace(".base_layer", ""): v for k, v in named.items()}, steps)
        return await server.load_adapter.remote(named, dict(peft_config), steps)
