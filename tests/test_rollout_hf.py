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
        self.load_weights = types.SimpleNamespace(
            remote=lambda named, steps: asyncio.to_thread(server.load_weights, named, steps)
        )


def test_rollout_weights_equal_actor_after_update(tiny_model):
    from harness import training_worker as engine
    from omegaconf import OmegaConf
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from erc_verl.cpu.rollout import HFServerAdapter

    worker = engine.build_actor_worker(tiny_model, lr=0.05, ppo_mini_batch_size=4, micro_batch_size=4)
    before = engine.get_params(worker)
    batch, adv = engine.random_rollout(4, 8, 6, vocab_high=200, seed=0)
    old_lp, old_ent = engine.compute_old_log_prob(worker, batch)
    engine.update_actor(worker, batch, old_lp, old_ent, adv, ppo_mini_batch_size=4)
    after = engine.get_params(worker)
    assert any(not torch.equal(before[k], after[k]) for k in after), "the update step changed nothing"

    server = _server(tiny_model)
    rollout_cfg = OmegaConf.create(
        {
            "name": "hf",
            "tensor_model_parallel_size": 1,
            "data_parallel_size": 1,
            "pipeline_model_parallel_size": 1,
            "prompt_length": 32,
            "response_length": 8,
        }
    )
    adapter = HFServerAdapter.__new__(HFServerAdapter)  # skip BaseRollout's dataclass conversion
    adapter.config = types.SimpleNamespace(**rollout_cfg)
    adapter.replica_rank, adapter.is_leader, adapter.sleep_level = 0, True, 0
    adapter._server = _LocalHandle(server)

    # verl's own naive weight sync (engine_workers.ActorRolloutRefWorker.update_weights)
    fake_self = types.SimpleNamespace(
        config=OmegaConf.create(
            {"rollout": {"name": "hf", "free_cache_engine": False, "checkpoint_engine": {"backend": "naive"}}}
        ),
        rollout=adapter,
        actor=types.SimpleNamespace(engine=worker.engine),
        layered_summon=False,
        peft_merge=False,
        base_sync_done=True,
    )
    update = ActorRolloutRefWorker.update_weights
    update = getattr(update, "__wrapped__", update)
    asyncio.run(update(fake_self, global_steps=1, mode="naive"))

    synced = server.get_weights()
    assert server.weight_version == 1 and server.global_steps == 1
    for name, tensor in after.items():
        assert torch.equal(synced[name], tensor.to(synced[name].dtype)), name
    assert any(not torch.equal(synced[k], before[k]) for k in after)


def test_a_sample_is_seeded_from_its_request_not_its_replica():
    from erc_verl.cpu.rollout import request_generator, sample_next

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def draw(sample, step=1, prompt=(5, 6)):
        gens = [request_generator(0, step, sample, list(prompt)) for _ in range(3)]
        return sample_next(logits, 1.0, 1.0, -1, gens)[0].tolist()

    assert request_generator(0, 1, None, [5]) is None  # no sample index: the replica's own stream
    assert draw(2) == draw(2)  # the same request on any replica, in any batch
    assert len({tuple(draw(s)) for s in range(4)}) > 1  # the samples of one group differ
    assert draw(2, step=2) != draw(2) or draw(2, prompt=(7,)) != draw(2)


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
