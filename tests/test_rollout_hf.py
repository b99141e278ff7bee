"""The `hf` CPU rollout backend (erc_verl/cpu/rollout.py): registration, sampling, weight sync.

The weight-sync test drives verl's own `ActorRolloutRefWorker.update_weights` (the sync
trainer's "naive" checkpoint-engine path) with the real FSDP2 engine on CPU after a real
update step, and checks that the rollout server then holds exactly the actor's weights.
The same path through Ray, inside verl's main_ppo, is covered by tests/test_smoke.py
(`training/rollout_probs_diff_max` after updates).
"""

import asyncio
import os
import sys
import types

import pytest
import torch

os.environ.setdefault("VERL_PLATFORM", "cpu")


def test_registration_is_lazy_and_complete():
    import subprocess

    code = (
        "import sys, erc_verl\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
        "from verl.workers.rollout import base\n"
        "assert 'erc_verl.cpu.rollout' not in sys.modules, 'heavy module imported at plugin load'\n"
        "assert 'hf' in RolloutReplicaRegistry._registry\n"
        "assert base._ROLLOUT_REGISTRY[('hf', 'async')] == 'erc_verl.cpu.rollout.HFServerAdapter'\n"
        "assert 'erc_verl.cpu.rollout' not in sys.modules\n"
        "cls = RolloutReplicaRegistry.get('hf'); ad = base.get_rollout_class('hf', 'async')\n"
        "assert cls.__name__ == 'HFReplica' and ad.__name__ == 'HFServerAdapter'\n"
        "assert not any(m == 'vllm' or m.startswith('vllm.') for m in sys.modules), 'vllm imported'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


def test_sample_next_honours_temperature_top_k_top_p():
    from erc_verl.cpu.rollout import sample_next

    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    best = logits.argmax(-1)
    tok, lp = sample_next(logits, 0.0, 1.0, -1)
    assert torch.equal(tok, best)
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, best[:, None]).squeeze(-1))
    g = torch.Generator().manual_seed(1)
    tok, lp = sample_next(logits, 0.7, 1.0, 1, g)  # top_k=1 is greedy
    assert torch.equal(tok, best)
    # log-prob under the uncut tempered distribution, as verl's actor scores it
    assert torch.allclose(lp, torch.log_softmax(logits / 0.7, -1).gather(-1, best[:, None]).squeeze(-1))
    tok, _ = sample_next(logits, 1.0, 1e-6, -1, g)  # a tiny nucleus is greedy
    assert torch.equal(tok, best)
    top3 = logits.topk(3, -1).indices
    for _ in range(5):
        tok, _ = sample_next(logits, 2.0, 1.0, 3, g)
        assert (top3 == tok[:, None]).any(-1).all()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from erc_verl.rehearsal.smoke import ModelSpec, build_model

    path = tmp_path_factory.mktemp("hf_rollout") / "model"
    build_model(path, ModelSpec(sft_steps=0), log=lambda *_: None)
    return str(path)


def _server(model_dir, **cfg):
    from erc_verl.cpu.rollout import HFRolloutServer

    config = {"prompt_length": 32, "response_length": 8, "seed": 0, **cfg}
    return HFRolloutServer(config, {"path": model_dir}, replica_rank=0)


def _generate_many(server, prompts, params):
    async def go():
        return await asyncio.gather(
            *[server.generate(p, dict(params), request_id=str(i)) for i, p in enumerate(prompts)]
        )

    return asyncio.run(go())


def test_server_generates_batched_with_eos_lengths_and_logprobs(tiny_model):
    from transformers import AutoTokenizer

    from erc_verl.rehearsal.smoke import prompt_ids

    tok = AutoTokenizer.from_pretrained(tiny_model)
    server = _server(tiny_model)
    prompts = [prompt_ids(tok, q) for q in ("1+2", "3+4", "12+30", "5+5")]
    outs = _generate_many(server, prompts * 2, {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True})
    for out in outs:
        assert 1 <= len(out.token_ids) <= 8  # response_length
        assert out.log_probs is not None and len(out.log_probs) == len(out.token_ids)
        assert all(lp <= 0 for lp in out.log_probs)
        if tok.eos_token_id in out.token_ids:  # stops at EOS, EOS kept
            assert out.token_ids.index(tok.eos_token_id) == len(out.token_ids) - 1
    # max_tokens from the request, no log-probs unless asked
    outs = _generate_many(server, prompts, {"temperature": 0.0, "max_tokens": 2, "ignore_eos": True})
    assert all(len(o.token_ids) == 2 and o.log_probs is None for o in outs)
    # greedy in a padded batch equals greedy alone (left padding + positions are right)
    alone = [_generate_many(server, [p], {"temperature": 0, "logprobs": True})[0] for p in prompts]
    batched = _generate_many(server, prompts, {"temperature": 0, "logprobs": True})
    for a, b in zip(alone, batched, strict=False):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.log_probs), torch.tensor(b.log_probs), atol=1e-4)


class _LocalHandle:
    """What `ray.get_actor(...)` gives the adapter, for a server in this process."""

    def __init__(self, server):
        for name in ("load_weights", "load_adapter"):
            method = getattr(server, name)
            setattr(self, name, types.SimpleNamespace(remote=lambda *a, m=method: asyncio.to_thread(m, *a)))


def test_rollout_weights_equal_actor_after_update(tiny_model):
    from harness import training_worker as engine

    worker = engine.build_actor_worker(tiny_model, lr=0.05, ppo_mini_batch_size=4, micro_batch_size=4)
    before = engine.get_params(worker)
    batch, adv = engine.random_rollout(4, 8, 6, vocab_high=200, seed=0)
    old_lp, old_ent = engine.compute_old_log_prob(worker, batch)
    engine.update_actor(worker, batch, old_lp, old_ent, adv, ppo_mini_batch_size=4)
    after = engine.get_params(worker)
    assert any(not torch.equal(before[k], after[k]) for k in after), "the update step changed nothing"

    server = _server(tiny_model)
    _naive_sync(server, worker)(1)

    synced = server.get_weights()
    assert server.weight_version == 1 and server.global_steps == 1
    for name, tensor in after.items():
        assert torch.equal(synced[name], tensor.to(synced[name].dtype)), name
    assert any(not torch.equal(synced[k], before[k]) for k in after)


def _adapter_for(server):
    from erc_verl.cpu.rollout import HFServerAdapter

    adapter = HFServerAdapter.__new__(HFServerAdapter)  # skip BaseRollout's dataclass conversion
    adapter.config = types.SimpleNamespace(tensor_model_parallel_size=1, data_parallel_size=1)
    adapter.replica_rank, adapter.is_leader, adapter.sleep_level = 0, True, 0
    adapter._server = _LocalHandle(server)
    return adapter


def _naive_sync(server, worker, base_sync_done=True):
    """`sync(step)`: verl's own naive weight sync (engine_workers.ActorRolloutRefWorker.update_weights)
    from the worker's engine into the server, for that global step."""
    from omegaconf import OmegaConf
    from verl.workers.engine_workers import ActorRolloutRefWorker

    fake_self = types.SimpleNamespace(
        config=OmegaConf.create(
            {"rollout": {"name": "hf", "free_cache_engine": False, "checkpoint_engine": {"backend": "naive"}}}
        ),
        rollout=_adapter_for(server),
        actor=types.SimpleNamespace(engine=worker.engine),
        layered_summon=False,
        peft_merge=False,
        base_sync_done=base_sync_done,
    )
    update = ActorRolloutRefWorker.update_weights
    update = getattr(update, "__wrapped__", update)
    return lambda step: asyncio.run(update(fake_self, global_steps=step, mode="naive"))


@pytest.mark.parametrize("base_sync_done", [False, True])  # load_format=dummy: the base is synced first
def test_rollout_serves_the_actors_lora_adapter_after_update(tiny_model, base_sync_done):
    from harness import training_worker as engine

    worker = engine.build_actor_worker(
        tiny_model,
        lr=0.05,
        ppo_mini_batch_size=4,
        micro_batch_size=4,
        extra_model={"lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"},
    )
    batch, adv = engine.random_rollout(4, 8, 6, vocab_high=200, seed=0)
    old_lp, old_ent = engine.compute_old_log_prob(worker, batch)
    for _ in range(2):  # B starts at zero: after two steps both A and B have moved
        engine.update_actor(worker, batch, old_lp, old_ent, adv, ppo_mini_batch_size=4)
    actor_lp, _ = engine.compute_old_log_prob(worker, batch)  # the LoRA policy the rollout must sample from
    assert (actor_lp - old_lp).abs().max() > 1e-3

    server = _server(tiny_model)
    sync = _naive_sync(server, worker, base_sync_done)
    for step in (1, 2):  # the second sync adds the adapter to the base again, not to the merged weights
        sync(step)
        assert server.global_steps == step
        torch.testing.assert_close(_server_log_probs(server, batch), actor_lp, rtol=0, atol=2e-5)


def _server_log_probs(server, batch):
    """Log-probs of the batch's responses under the server's model, padded like the harness's."""
    P = batch["prompts"].shape[1]
    with torch.no_grad():
        logits = server.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits.float()
    log_probs = torch.log_softmax(logits[:, P - 1 : -1], dim=-1)
    token = log_probs.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    return token * batch["response_mask"]


def test_lora_variants_the_server_cannot_serve_are_refused_naming_the_fix():
    from erc_verl.cpu.rollout import lora_merged_weights

    adapter = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2, 4)}
    with pytest.raises(NotImplementedError, match="use_dora.*lora.merge=true"):
        lora_merged_weights({}, adapter, {"r": 2, "lora_alpha": 4, "use_dora": True})
    with pytest.raises(ValueError, match="lacks its B matrix"):
        lora_merged_weights(
            {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, adapter, {"r": 2, "lora_alpha": 4}
        )


def test_a_sample_is_seeded_from_its_request_not_its_replica():
    from erc_verl.cpu.rollout import request_generator, sample_next

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def draw(sample, step=1, prompt=(5, 6)):
        gens = [request_generator(0, step, sample, list(prompt)) for _ in range(3)]
        return sample_next(logits, 1.0, 1.0, -1, gens)[0].tolist()

    assert request_generator(0, 1, None, [5]) is None  # no sample index: the replica's own stream
    assert draw(2) == draw(2)  # the same request on any replica, in any batch
    assert len({tuple(draw(s)) for s in range(4)}) > 1  # the samples of one group differ
    assert draw(2, step=2) != draw(2)  # another training step draws anew
    assert draw(2, prompt=(7,)) != draw(2)  # another prompt too


def test_a_standalone_replica_adapter_honours_the_replica_rank_verl_passes(tiny_model, monkeypatch):
    """verl builds a standalone replica's adapter in its CheckpointEngineWorker with the replica's
    own rank (verl/workers/rollout/replica.py get_ray_class_with_init_args ->
    checkpoint_engine/base.py CheckpointEngineWorker.__init__): its weights must go to that
    replica's server, not to replica 0's (the hybrid one beside the trainer)."""
    from verl.workers.config import HFModelConfig, RolloutConfig
    from verl.workers.rollout.base import get_rollout_class

    import erc_verl  # noqa: F401  (registers the hf adapter)
    from erc_verl.cpu import rollout

    config = RolloutConfig(name="hf", tensor_model_parallel_size=1, prompt_length=32, response_length=8)
    model_config = HFModelConfig(path=tiny_model)
    monkeypatch.setenv("RANK", "0")  # the only worker of its replica's worker group
    looked_up = []
    monkeypatch.setattr(rollout.ray, "get_actor", lambda name: looked_up.append(name) or object())
    adapter_cls = get_rollout_class("hf", "async")
    standalone = adapter_cls(config=config, model_config=model_config, device_mesh=None, replica_rank=1)
    assert standalone.replica_rank == 1 and standalone.is_leader
    standalone._server_handle()
    assert looked_up == [rollout.server_actor_name(1)]
    # beside the trainer (hybrid) no rank is passed: it follows from the worker's RANK
    monkeypatch.setenv("RANK", "2")
    assert adapter_cls(config=config, model_config=model_config, device_mesh=None).replica_rank == 2


def test_weights_never_change_under_a_generating_batch(tiny_model, monkeypatch):
    """A weight update that arrives while a batch generates (the asynchronous trainers) waits for
    it, and the batch reports the weight version it was generated with."""
    import threading

    from erc_verl.cpu import rollout

    server = _server(tiny_model)
    server.global_steps = 4
    started, release = threading.Event(), threading.Event()
    real = rollout.generate_batch

    def slow_generate(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout, "generate_batch", slow_generate)
    results = []
    gen = threading.Thread(
        target=lambda: results.extend(
            server._generate_locked(
                [[5, 6]], [2], temperature=0.0, top_p=1.0, top_k=-1, eos_ids=set(), pad_id=0, ignore_eos=True
            )
        )
    )
    gen.start()
    assert started.wait(30)
    weights = server.get_weights()
    load = threading.Thread(target=server.load_weights, args=(weights, 5))
    load.start()
    load.join(0.5)
    assert load.is_alive() and server.global_steps == 4  # waiting for the batch
    release.set()
    gen.join(30)
    load.join(30)
    assert server.global_steps == 5 and server.weight_version == 1
    ((tokens, _, _, version, steps),) = results
    assert len(tokens) == 2 and (version, steps) == (0, 4)


def test_each_samples_index_reaches_the_hf_server_through_verls_agent_loop_and_client():
    """verl's agent loop runs SingleTurnAgentLoop.run(..., session_id=i) for the i-th sample of a
    group (verl/trainer/ppo/v1/agent_loop_tq.py); erc_verl's wrappers hand i to the hf server as
    `erc_sample` through verl's own LLMServerClient.generate, for rollout.name=hf only."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.replica import TokenOutput

    sent = []

    class Remote:
        def __init__(self, fn):
            self.remote = fn

    async def acquire(request_id, **fields):
        return "server-0", server

    async def generate(**kwargs):
        sent.append(kwargs)
        return TokenOutput(token_ids=[5, 6], log_probs=None, extra_fields={})

    async def fields():
        return []

    balancer = types.SimpleNamespace(
        require_acquire_fields=Remote(fields),
        require_release_fields=Remote(fields),
        acquire_server=Remote(acquire),
        release_server=Remote(lambda **kwargs: None),
    )
    server = types.SimpleNamespace(generate=Remote(generate))

    def agent_loop(name):
        config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": name}}})
        loop = SingleTurnAgentLoop.__new__(SingleTurnAgentLoop)  # the parts run() uses, no tokenizer or Ray
        loop.server_manager = LLMServerClient(config, balancer)
        loop.rollout_config = types.SimpleNamespace(full_determinism=False)
        loop.response_length = 8

        async def no_media(*args, **kwargs):
            return {}

        async def tokens(messages, **kwargs):
            return [1, 2, 3]

        async def merge(prompt_ids, response_ids, *args, **kwargs):
            merged = types.SimpleNamespace(token_ids=prompt_ids + response_ids)
            return merged, [1] * len(response_ids), None

        loop.process_multi_modal_info = no_media
        loop._get_mm_processor_kwargs = lambda audios: None
        loop._assert_mm_supported = lambda has_media: None
        loop.ct_build_initial_tokens = tokens
        loop.build_sglang_video_payload = lambda videos, mm_inputs: None
        loop.ct_merge_assistant_token = merge
        return loop

    async def run_group(name):
        loop = agent_loop(name)
        for i in range(3):  # what _run_prompt does for rollout.n = 3
            await loop.run({"temperature": 1.0}, session_id=i, raw_prompt=[{"role": "user", "content": "1+2"}])

    asyncio.run(run_group("hf"))
    assert [call.get("erc_sample") for call in sent] == [0, 1, 2]
    sent.clear()
    asyncio.run(run_group("vllm"))  # other backends get verl's call unchanged
    assert len(sent) == 3 and all("erc_sample" not in call for call in sent)
