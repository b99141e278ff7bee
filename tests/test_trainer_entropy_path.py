"""The OLD-policy entropy reaches the ERC loss through verl 0.9.1's real trainer code.

What runs for real, in this process, on CPU:

* V1 trainer (verl's default, ``verl/trainer/ppo/v1/trainer_base.py``): ``PPOTrainer``'s
  ``_compute_old_log_prob``, ``_compute_advantage`` and ``_update_actor``, called on an
  instance of the registered trainer class made with ``object.__new__`` and given only
  ``config`` (verl's composed ``ppo_trainer.yaml``) and ``actor_rollout_wg``, the only
  attributes those three methods read here. The batch lives in a real TransferQueue
  (``tq.init(config.transfer_queue)`` as main_ppo does; Ray-hosted controller and storage
  unit), stored with the field layout the V1 agent loop writes
  (``agent_loop_tq._agent_loop_postprocess``: one jagged row per sample).
* v0 trainer (``trainer.use_v1=false``, ``verl/trainer/ppo/ray_trainer.py``):
  ``RayPPOTrainer._compute_old_log_prob`` (as wrapped by erc_verl's plumbing, which keeps a
  copy of ``entropys`` under ``entropy``) and ``_update_actor``. ``fit()`` is not driven here
  (it needs rollout servers; tests/test_smoke.py runs the whole V1 trainer through main_ppo
  with the CPU rollout backend); its lines around the old-log-prob call (``meta_info``
  temperature / token counts, pop ``entropys``, ``batch.union(old_log_prob)``) are
  reproduced verbatim in the test.
* Worker side, for both: a real ``ActorRolloutRefWorker`` (``verl/workers/engine_workers.py``)
  built by its own ``__init__`` and ``init_model`` for role ``"actor"`` (no rollout engine),
  so ``compute_log_prob`` / ``update_actor`` run inside their ``@register`` wrappers, whose
  ``tqbridge`` turns the V1 trainer's ``KVBatchMeta`` into a TensorDict by fetching EVERY
  stored field from TransferQueue and writes the worker's output back.
* Driver-side dispatch: verl's ``WorkerGroup._bind_worker_method`` with
  ``verl.single_controller.ray.base.func_generator``: the nd-compute dispatch/collect
  functions (chunking, ``ray.put`` of the chunks, concat) are verl's.

Shimmed: only the Ray actor hop. ``InProcessWorkerGroup.execute_all`` calls the method on the
in-process worker, resolving ``ObjectRef`` arguments as Ray does for an actor call and
returning ``ray.put`` results that ``func_generator`` ``ray.get``s. One gloo rank, dp = 1.

The loss is spied on through ``core_algos.POLICY_LOSS_REGISTRY["dapo_erc"]``,
where verl's ``ppo_loss`` looks it up.
"""

import copy

import pytest
import ray  # noqa: E402  (a verl dependency)
import torch
import transfer_queue as tq  # noqa: E402  (the `test` extra; verl's V1 trainer needs it: no skip, fail loudly)
from harness import training_worker as engine_cpu  # sets VERL_PLATFORM=cpu before verl resolves its platform
from harness.private_ray import private_ray

from erc_verl.metrics import METRIC_NAMES

ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
N_PROMPTS, ROLLOUT_N = 4, 2
BSZ = N_PROMPTS * ROLLOUT_N
PPO_MINI_BATCH_PROMPTS = 2  # x rollout.n = 4 sequences: two optimizer steps, the second off-policy
MICRO_BATCH = 2
ERC_METRICS = METRIC_NAMES

pytestmark = pytest.mark.slow  # Ray + TransferQueue start (~20 s) and FSDP2 workers on CPU


# ----------------------------------------------------------------------------------------
# fixtures: model, config, real worker, Ray + TransferQueue, in-process worker group
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), vocab_size=512, hidden_size=64, layers=2)
    return engine_cpu.sharpened_qwen2(base, tmp_path_factory.mktemp("tiny_qwen2_peaked"), 30.0)


@pytest.fixture(scope="module")
def config(model_dir):
    """verl's composed ppo_trainer.yaml, actor on CPU, policy loss = erc_verl's dapo_erc."""
    from omegaconf import open_dict

    cfg = engine_cpu.actor_config_dict(
        model_dir,
        policy_loss={"_target_": ERC_TARGET, "loss_mode": "dapo_erc"},
        lr=1e-2,
        micro_batch_size=MICRO_BATCH,
        ppo_mini_batch_size=PPO_MINI_BATCH_PROMPTS,
        rollout_n=ROLLOUT_N,
    )
    with open_dict(cfg):
        cfg.algorithm.adv_estimator = "grpo"
        cfg.transfer_queue.enable = True  # what main_ppo sets for the V1 trainer
        cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    return cfg


@pytest.fixture(scope="module")
def actor_worker(config):
    """verl's ActorRolloutRefWorker, role "actor": real __init__ and init_model, no rollout."""
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from erc_verl.cpu.platform import register_cpu_platform

    assert register_cpu_platform()
    engine_cpu.init_single_process_group()
    worker = ActorRolloutRefWorker(config=copy.deepcopy(config.actor_rollout_ref), role="actor")
    worker.init_model()
    return worker


@pytest.fixture(scope="module")
def ray_cluster():
    # logical CPUs: TransferQueue's controller and its storage unit each reserve one
    with private_ray(num_cpus=3, include_dashboard=False, log_to_driver=False):
        yield


@pytest.fixture(scope="module")
def transfer_queue(ray_cluster, config):
    tq.init(config.transfer_queue)  # as verl/trainer/main_ppo.py does before building the trainer
    yield
    tq.close()


def _in_process_worker_group(worker):
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.single_controller.ray.base import func_generator

    class InProcessWorkerGroup(WorkerGroup):
        """verl's WorkerGroup method binding and dispatch; the one worker lives in this process."""

        def __init__(self, worker):
            super().__init__(resource_pool=None)
            self._workers = [worker]
            self._bind_worker_method(type(worker), func_generator)

        def execute_all(self, method_name, *args, **kwargs):
            # RayWorkerGroup.execute_all_async minus the actor hop: per-worker list entries are
            # scattered, ObjectRefs resolved (Ray does that for top-level actor-call args), and
            # the result comes back as an ObjectRef for func_generator to ray.get.
            n = len(self._workers)

            def arg(value, rank):
                if isinstance(value, (list, tuple)) and len(value) == n:
                    value = value[rank]
                return ray.get(value) if isinstance(value, ray.ObjectRef) else value

            outputs = []
            for rank, worker in enumerate(self._workers):
                call_args = [arg(a, rank) for a in args]
                call_kwargs = {k: arg(v, rank) for k, v in kwargs.items()}
                outputs.append(ray.put(getattr(worker, method_name)(*call_args, **call_kwargs)))
            return outputs

        execute_rank_zero = execute_all

    return InProcessWorkerGroup(worker)


@pytest.fixture(scope="module")
def worker_group(actor_worker, ray_cluster):
    return _in_process_worker_group(actor_worker)


def _trainer(cls, config, worker_group):
    trainer = object.__new__(cls)
    trainer.config = config
    trainer.actor_rollout_wg = worker_group
    return trainer


def _rollout_rows(seed=0):
    """Per-sample rows as the V1 agent loop stores them (agent_loop_tq._agent_loop_postprocess)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for p in range(N_PROMPTS):
        prompt = torch.randint(3, 500, (4 + p % 3,), generator=gen)
        for s in range(ROLLOUT_N):
            response = torch.randint(3, 500, (5 + (3 * p + s) % 6,), generator=gen)
            input_ids = torch.cat([prompt, response])
            rm_scores = torch.zeros(len(response))
            rm_scores[-1] = float(s % 2)  # one right, one wrong per group: nonzero GRPO advantages
            row = {
                "prompts": prompt,
                "responses": response,
                "response_mask": torch.ones(len(response), dtype=torch.int64),
                "rollout_log_probs": -6.0 * torch.rand(len(response), generator=gen),
                "rm_scores": rm_scores,
                "num_turns": 2,
                "extra_fields": {},
                "uid": f"prompt{p}",
                "data_source": "tiny",
            }
            row["loss_mask"] = row["response_mask"]
            row["input_ids"] = input_ids
            row["position_ids"] = torch.arange(len(input_ids))
            row["multi_modal_inputs"] = {}
            rows.append((f"prompt{p}_{s}_0", row))  # key format {uid}_{session_id}_{index}
    return rows


def _put_rollout(partition_id, seed=0):
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    rows = _rollout_rows(seed)
    keys = [f"{partition_id}-{key}" for key, _ in rows]
    fields = [row for _, row in rows]
    tags = [
        {
            "status": "success",
            "prompt_len": len(r["prompts"]),
            "response_len": len(r["responses"]),
            "seq_len": len(r["input_ids"]),
            "global_steps": 1,
        }
        for r in fields
    ]
    tq.kv_batch_put(keys=keys, partition_id=partition_id, fields=list_of_dict_to_tensordict(fields), tags=tags)
    # what the replay buffer hands the trainer: keys and tags, no field list
    return KVBatchMeta(partition_id=partition_id, keys=keys, tags=tags)


@pytest.fixture
def loss_spy(monkeypatch):
    from verl.trainer.ppo import core_algos

    real = core_algos.POLICY_LOSS_REGISTRY["dapo_erc"]
    calls = []

    def spy(*args, entropy=None, old_entropy=None, **kwargs):
        calls.append(
            {
                "entropy": None if entropy is None else entropy.detach().clone(),
                "old_entropy": None if old_entropy is None else old_entropy.detach().clone(),
                "response_mask": kwargs["response_mask"].detach().clone().bool(),
            }
        )
        return real(*args, entropy=entropy, old_entropy=old_entropy, **kwargs)

    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "dapo_erc", spy)
    return calls


def _rows(padded: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [padded[i][mask[i]] for i in range(padded.shape[0])]


def _assert_each_row_seen_once(calls, expected_rows):
    """Every micro-batch row of old_entropy is bit-identical to exactly one expected row, each used once."""
    seen = [0] * len(expected_rows)
    for call in calls:
        for row in _rows(call["old_entropy"], call["response_mask"]):
            hits = [i for i, exp in enumerate(expected_rows) if exp.shape == row.shape and torch.equal(exp, row)]
            assert len(hits) == 1, "an old_entropy row the loss received matches no stored entropy row"
            seen[hits[0]] += 1
    assert seen == [1] * len(expected_rows), seen


def _assert_old_not_current(calls):
    """First mini-batch: same weights as the old pass, so H_cur == H_old row for row (this also
    proves the rows are aligned with their samples); after an optimizer step they differ."""
    per_mini = (PPO_MINI_BATCH_PROMPTS * ROLLOUT_N) // MICRO_BATCH
    assert len(calls) == BSZ // MICRO_BATCH
    diffs = [(c["entropy"] - c["old_entropy"]).abs().masked_fill(~c["response_mask"], 0).max().item() for c in calls]
    assert max(diffs[:per_mini]) < 1e-4, diffs
    assert min(diffs[per_mini:]) > 1e-3, diffs


# ----------------------------------------------------------------------------------------
# V1 trainer (default)
# ----------------------------------------------------------------------------------------


def test_v1_trainer_feeds_old_entropy_from_transfer_queue(config, worker_group, transfer_queue, loss_spy):
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.workers.utils.padding import response_from_nested

    trainer_cls = get_trainer_cls(config.trainer.v1.trainer_mode)
    assert issubclass(trainer_cls, PPOTrainer)
    for name in ("_compute_old_log_prob", "_compute_advantage", "_update_actor"):
        assert getattr(trainer_cls, name) is getattr(PPOTrainer, name), f"{trainer_cls.__name__} overrides {name}"
    trainer = _trainer(trainer_cls, config, worker_group)
    batch = _put_rollout("train")
    metrics = {}

    batch = trainer._compute_old_log_prob(batch, metrics)
    assert loss_spy == []  # the old-log-prob pass computes no loss
    assert {"old_log_probs", "entropy"} <= set(batch.fields)
    stored = tq.kv_batch_get(
        keys=batch.keys, partition_id=batch.partition_id, select_fields=["entropy", "response_mask"]
    )
    old_entropy = stored["entropy"]  # written by the trainer: response part, one jagged row per sample
    assert old_entropy.is_nested
    lengths = stored["response_mask"].offsets().diff()
    assert torch.equal(old_entropy.offsets().diff(), lengths)
    expected = [row.float() for row in old_entropy.unbind()]
    assert all(bool((row > 0).all()) for row in expected)
    token_mean = torch.cat(expected).mean().item()
    assert metrics["actor/entropy"] == pytest.approx(token_mean, rel=1e-5)
    # the worker's full-sequence outputs went through response_from_nested (log_probs stays stored)
    full = tq.kv_batch_get(
        keys=batch.keys, partition_id=batch.partition_id, select_fields=["log_probs", "old_log_probs"]
    )
    cut = response_from_nested(full["log_probs"], stored["response_mask"])
    assert torch.equal(cut.values(), full["old_log_probs"].values())

    batch = trainer._compute_advantage(batch, metrics)
    # the KVBatchMeta the update gets names every stored field; tqbridge fetches them all
    assert {"entropy", "old_log_probs", "advantages"} <= set(batch.fields)

    batch = trainer._update_actor(batch, metrics)

    _assert_each_row_seen_once(loss_spy, expected)
    _assert_old_not_current(loss_spy)
    for key in ERC_METRICS + ("actor/pg_loss", "actor/grad_norm"):
        assert key in metrics, key
    fractions = sum(metrics[f"actor/erc_{k}"] for k in ("keep_frac", "clip_frac_low", "clip_frac_high"))
    assert fractions == pytest.approx(1.0)
    assert 0.0 < metrics["actor/erc_keep_frac"] < 1.0  # the off-policy mini-batch cut some tokens
    assert metrics["actor/entropy_ratio_min"] < 0.95 or metrics["actor/entropy_ratio_max"] > 1.05


def test_v1_bypass_mode_stops_the_update_loudly(config, worker_group, transfer_queue, loss_spy):
    """bypass_mode skips the old-log-prob pass, so no old entropy exists: the update must refuse."""
    from omegaconf import open_dict
    from verl.trainer.ppo.v1 import get_trainer_cls

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        cfg.algorithm.rollout_correction.bypass_mode = True
    trainer = _trainer(get_trainer_cls(cfg.trainer.v1.trainer_mode), cfg, worker_group)
    before = engine_cpu.get_params(worker_group._workers[0].actor)
    metrics = {}
    batch = trainer._compute_old_log_prob(_put_rollout("bypass", seed=1), metrics)
    batch = trainer._compute_advantage(batch, metrics)
    # old_log_probs = rollout_log_probs; nothing wrote an old entropy
    assert "old_log_probs" in batch.fields and "entropy" not in batch.fields
    with pytest.raises(ValueError, match="old-policy entropy") as err:
        trainer._update_actor(batch, metrics)
    assert "bypass_mode" in str(err.value)
    assert loss_spy == []
    after = engine_cpu.get_params(worker_group._workers[0].actor)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------
# v0 trainer (trainer.use_v1=false)
# ----------------------------------------------------------------------------------------


def test_v0_trainer_feeds_old_entropy(config, worker_group, loss_spy):
    import numpy as np
    from verl import DataProto
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils.metric import reduce_metrics

    # erc_verl's plumbing wraps this method once the module is imported; verl's own is __wrapped__
    assert getattr(RayPPOTrainer._compute_old_log_prob, "_erc_verl_plumbing", False)
    trainer = _trainer(RayPPOTrainer, config, worker_group)

    rows = [row for _, row in _rollout_rows(seed=2)]
    padded = engine_cpu.make_batch([r["prompts"] for r in rows], [r["responses"] for r in rows])
    gen = torch.Generator().manual_seed(2)
    resp_mask = padded["response_mask"]
    padded["advantages"] = torch.randn(BSZ, 1, generator=gen).expand_as(resp_mask) * resp_mask
    uids = np.array([f"prompt{i // ROLLOUT_N}" for i in range(BSZ)], dtype=object)
    batch = DataProto(batch=padded, non_tensor_batch={"uid": uids})
    # the meta_info fit() sets before the old-log-prob pass (no images here)
    batch.meta_info["temperature"] = trainer.config.actor_rollout_ref.rollout.temperature
    batch.meta_info["global_token_num"] = torch.sum(batch.batch["attention_mask"], dim=-1).tolist()
    batch.meta_info["images_seqlens"] = []

    # verl's own method returns the old entropy only under `entropys`, which fit() pops
    raw, _ = RayPPOTrainer._compute_old_log_prob.__wrapped__(trainer, batch)
    assert set(raw.batch.keys()) == {"old_log_probs", "entropys"}

    # ---- RayPPOTrainer.fit()'s lines, verbatim but for self -> trainer and the metrics/timer lines ----
    old_log_prob, old_log_prob_mfu = trainer._compute_old_log_prob(batch)
    entropys = old_log_prob.batch["entropys"]
    response_masks = batch.batch["response_mask"]
    actor_config = trainer.config.actor_rollout_ref.actor
    entropy_agg = agg_loss(
        loss_mat=entropys,
        loss_mask=response_masks,
        loss_agg_mode=actor_config.loss_agg_mode,
        loss_scale_factor=actor_config.loss_scale_factor,
    )
    old_log_prob.batch.pop("entropys")
    batch = batch.union(old_log_prob)
    # ---- end of fit() lines ----
    assert "entropy" in batch.batch.keys()
    assert loss_spy == []

    actor_output = trainer._update_actor(batch)
    metrics = reduce_metrics(actor_output.meta_info["metrics"])

    mask = response_masks.bool()
    expected = _rows(entropys.float(), mask)
    assert torch.equal(torch.cat(expected), torch.cat(_rows(raw.batch["entropys"], mask)))
    assert entropy_agg.item() == pytest.approx(torch.cat(expected).mean().item(), rel=1e-5)
    _assert_each_row_seen_once(loss_spy, expected)
    _assert_old_not_current(loss_spy)
    for key in ERC_METRICS:
        assert key in metrics, key
    assert 0.0 < metrics["actor/erc_keep_frac"] < 1.0
