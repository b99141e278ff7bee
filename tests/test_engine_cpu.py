"""Smoke test of the CPU harness: verl's real engine TrainingWorker (FSDP2, gloo, one process)
doing the V1 trainer's old-log-prob pass and one actor update with the stock `vanilla` loss."""

import math

import pytest
import torch

# Sets VERL_PLATFORM=cpu before verl resolves its platform; import it before other verl code.
from harness import training_worker as engine_cpu

BSZ, PROMPT_LEN, RESPONSE_LEN = 4, 8, 16


@pytest.fixture(scope="module")
def actor(tmp_path_factory):
    model_dir = engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), vocab_size=512, hidden_size=64, layers=2)
    worker = engine_cpu.build_actor_worker(
        model_dir,
        policy_loss={"loss_mode": "vanilla"},
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        entropy_coeff=0.0,
        loss_agg_mode="token-mean",
        lr=1e-3,
        micro_batch_size=2,
        ppo_mini_batch_size=BSZ,
    )
    gen = torch.Generator().manual_seed(0)
    # ragged lengths so left/right padding and the packed (remove-padding) path are exercised
    prompts = [torch.randint(3, 80, (PROMPT_LEN - i,), generator=gen).tolist() for i in range(BSZ)]
    responses = [torch.randint(3, 80, (RESPONSE_LEN - 3 * i,), generator=gen).tolist() for i in range(BSZ)]
    batch = engine_cpu.make_batch(prompts, responses)
    return worker, batch


def test_tokenizer_round_trip(tmp_path):
    tok = engine_cpu.build_tokenizer()
    text = "12 + 7 = 19, 3-4=-1"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.eos_token_id == 1 and tok.pad_token_id == 0


def test_old_log_prob_and_update(actor):
    worker, batch = actor
    mask = batch["response_mask"].bool()
    assert batch["input_ids"].shape == (BSZ, PROMPT_LEN + RESPONSE_LEN)

    old_log_probs, entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    assert old_log_probs.shape == entropy.shape == (BSZ, RESPONSE_LEN)
    assert torch.isfinite(old_log_probs).all() and torch.isfinite(entropy).all()
    assert (old_log_probs[mask] < 0).all()
    assert (entropy[mask] > 0).all() and (entropy[mask] <= math.log(512) + 1e-4).all()
    assert (old_log_probs[~mask] == 0).all() and (entropy[~mask] == 0).all()

    # the same model read with a plain padded HF forward gives the same numbers
    model = engine_cpu.rollout_model(worker)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits[:, PROMPT_LEN - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_lp = logp.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    ref_ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(old_log_probs[mask], ref_lp[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy[mask], ref_ent[mask], atol=1e-4, rtol=1e-4)

    before = engine_cpu.get_params(worker)
    advantages = torch.randn(BSZ, RESPONSE_LEN, generator=torch.Generator().manual_seed(1)) * mask
    metrics = engine_cpu.update_actor(
        worker, batch, old_log_probs, entropy, advantages, ppo_mini_batch_size=BSZ, temperature=1.0
    )
    after = engine_cpu.get_params(worker)

    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/grad_norm"):
        assert key in metrics, sorted(metrics)
    assert math.isfinite(metrics["actor/grad_norm"]) and metrics["actor/grad_norm"] > 0
    assert math.isfinite(metrics["actor/pg_loss"])
    # first mini-batch is on-policy: ratio 1, nothing clipped
    assert abs(metrics["actor/ppo_kl"]) < 1e-5 and metrics["actor/pg_clipfrac"] == 0.0
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # the new weights reach the sampler
    samples = engine_cpu.generate(worker, [[5, 6, 7]], n=2, max_new_tokens=4, temperature=1.0, seed=0)
    assert len(samples) == 2 and all(1 <= len(s) <= 4 for s in samples)
