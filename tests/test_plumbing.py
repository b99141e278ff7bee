"""The runtime wrappers of erc_verl/integration/verl_0_9_1.py, one behaviour each.

- LoRA with a reference model: verl runs the reference pass through the actor's own worker
  (no_lora_adapter, calculate_entropy=False); it is not the old-log-prob pass and gets no entropy;
- the first-update refusals: every ERC run (the positive-sample NLL alone included), keyed so that
  a new config reusing a freed one's id is checked again;
- the fused-kernel path hands the micro-batch back with verl's own calculate_entropy;
- an all-kept update logs exactly 1.0, and the first mini-batch's keep fraction is its own metric.
"""

import pytest
import torch
from harness import training_worker as engine_cpu  # sets VERL_PLATFORM=cpu before verl resolves its platform

from erc_verl.integration import verl_0_9_1

ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
BSZ = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("plumbing"), vocab_size=256, seed=3)


@pytest.fixture(scope="module")
def rollout():
    # Responses of 15 down to 8 tokens: mini-batches of 4 whose per-micro-batch shares n / 54 and n / 38
    # sum to 0.9999999999999999 in float64.
    return engine_cpu.random_rollout(BSZ, 6, 15, vocab_high=200, seed=4)


def _infer(worker, batch, **flags):
    from verl.utils import tensordict_utils as tu

    data = engine_cpu.to_worker_batch(batch)
    tu.assign_non_tensor(data, compute_loss=False, temperature=1.0, **flags)
    return worker.infer_batch(data)


def test_lora_reference_pass_is_not_the_old_pass_and_computes_no_entropy(model_dir, rollout):
    batch, advantages = rollout
    worker = engine_cpu.build_actor_worker(
        model_dir,
        policy_loss={"_target_": ERC_TARGET, "loss_mode": "dapo_erc"},
        extra_model={"lora_rank": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        micro_batch_size=2,
        ppo_mini_batch_size=4,
        lr=1e-2,
    )
    # What both of verl's trainers send for the reference pass of a LoRA run (ref_in_actor).
    ref = _infer(worker, batch, calculate_entropy=False, no_lora_adapter=True)
    assert "entropy" not in ref.keys() and "log_probs" in ref.keys()
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    assert old_entropy.abs().sum() > 0
    metrics = engine_cpu.update_actor(
        worker, batch, old_log_probs, old_entropy, advantages, ppo_mini_batch_size=4, temperature=1.0
    )
    assert metrics["actor/erc_keep_frac_first_mb"] == 1.0  # on-policy: the adapter's H_old is H_cur
    assert 0.0 < metrics["actor/erc_keep_frac"] <= 1.0


class _Config:
    """An actor config that can be weakly referenced, like verl's dataclasses."""

    def __init__(self, strategy, **policy_loss):
        self.strategy = strategy
        self.policy_loss = {"loss_mode": "vanilla", **policy_loss}

    def get(self, key, default=None):
        return getattr(self, key, default)


def test_first_update_refuses_a_positive_nll_only_run_too():
    calls = []

    def verl_ppo_loss(*args):
        calls.append(args)
        return torch.zeros(()), {}

    ppo_loss = verl_0_9_1.make_ppo_loss(verl_ppo_loss)
    with pytest.raises(ValueError, match="erc_verl: actor_rollout_ref.actor.strategy=megatron"):
        ppo_loss(_Config("megatron", positive_nll_coeff=0.1), {}, None)
    assert not calls
    ppo_loss(_Config("megatron"), {}, None)  # not an ERC run: verl's own, unchecked
    assert len(calls) == 1


def test_a_new_config_at_a_freed_configs_id_is_checked_again():
    good = _Config("fsdp2", positive_nll_coeff=0.1)
    verl_0_9_1._first_update_checks(good)
    freed = id(good)
    del good
    bad = _Config("megatron", positive_nll_coeff=0.1)
    assert id(bad) == freed  # CPython hands the freed object's memory to the next one of its size
    with pytest.raises(ValueError, match="strategy=megatron"):
        verl_0_9_1._first_update_checks(bad)


def test_fused_kernel_path_restores_calculate_entropy():
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    seen = []

    def verl_prepare(self, output, output_args, micro_batch, logits_processor_func):
        seen.append(tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=None))
        return {"entropy": torch.ones(3), "log_probs": torch.zeros(3)}

    wrapped = verl_0_9_1.make_prepare_model_outputs(verl_prepare)
    micro_batch = TensorDict({}, batch_size=[])
    tu.assign_non_tensor(
        micro_batch, **{verl_0_9_1.GATE_FLAG: "update", "use_fused_kernels": True, "calculate_entropy": False}
    )
    with pytest.warns(UserWarning, match="use_fused_kernels"):
        out = wrapped(None, None, {}, micro_batch, None)
    assert seen == [True] and torch.equal(out[verl_0_9_1.GATE_KEY], torch.ones(3))
    assert tu.get_non_tensor_data(data=micro_batch, key="calculate_entropy", default=None) is False


def test_an_all_kept_update_logs_exactly_one_and_the_first_mini_batchs_keep_fraction(model_dir, rollout):
    # Micro-batches of one ragged response each: each reports its share of the mini-batch's tokens,
    # and summing those shares rounds; the kept / response token counts do not.
    batch, advantages = rollout
    worker = engine_cpu.build_actor_worker(
        model_dir,
        policy_loss={
            "_target_": ERC_TARGET,
            "loss_mode": "dapo_erc",
            "entropy_ratio_low": 0.5,
            "entropy_ratio_high": 2.0,
        },
        micro_batch_size=1,
        ppo_mini_batch_size=4,
        lr=1e-4,
    )
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    kwargs = dict(ppo_mini_batch_size=4, temperature=1.0, shuffle=False)
    raw = engine_cpu.update_actor(worker, batch, old_log_probs, old_entropy, advantages, raw=True, **kwargs)
    assert raw["actor/erc_keep_frac"] == [1.0, 1.0]
    assert raw["actor/erc_keep_frac_first_mb"] == [1.0]
    assert not [k for k in raw if k.endswith(("erc_keep_count", "erc_response_tokens"))]  # consumed, not logged
