"""The authors' positive-sample NLL term (positive_nll_coeff) through verl 0.9.1's real actor update.

Kwai-Klear/ERC's dp_actor adds, per micro-batch, coeff * agg_loss(-log_prob, mask of the responses
whose summed token-level reward == 1.0) to the policy loss, for every loss mode and outside the ERC
gate. Here the term's value and gradient on the CPU engine (FSDP2 over gloo) are checked against an
independent reference: a plain Hugging Face model with the worker's weights, the formula written out
per micro-batch (token-mean: coeff * N_micro / N_minibatch * mean over the micro-batch's positive
tokens of -log p).
"""

import math

import pytest
import torch
from harness import training_worker as engine_cpu  # sets VERL_PLATFORM=cpu before verl resolves its platform

from erc_verl.config import ERCPolicyLossConfig
from erc_verl.losses import positive_counts, positive_nll_loss, positive_responses
from erc_verl.settings import settings

BSZ, PROMPT_LEN, RESPONSE_LEN, MICRO = 8, 6, 12, 2
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"
COEFF = 0.1
# Rows 0, 3, 4 and 5 are correct: micro-batch [2, 3] has one positive response of two, [4, 5] two,
# [6, 7] none, so the per-micro-batch normalisation matters.
CORRECT = (0, 3, 4, 5)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2_nll"), vocab_size=512, hidden_size=64, layers=2)


@pytest.fixture(scope="module")
def rollout():
    return engine_cpu.random_rollout(BSZ, PROMPT_LEN, RESPONSE_LEN)


def rewards_for(batch, correct):
    """Token-level rewards as verl stores them: the score (+1 correct, -1 wrong) on the last response token."""
    mask = batch["response_mask"]
    lengths = mask.sum(dim=1)
    rewards = torch.zeros(mask.shape, dtype=torch.float32)
    for i in range(mask.shape[0]):
        rewards[i, int(lengths[i]) - 1] = 1.0 if i in correct else -1.0
    return rewards


def build(model_dir, loss_mode, coeff, micro=MICRO, **policy_loss):
    return engine_cpu.build_actor_worker(
        model_dir,
        policy_loss={"_target_": ERC_TARGET, "loss_mode": loss_mode, "positive_nll_coeff": coeff, **policy_loss},
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        clip_ratio_c=10.0,
        lr=1e-3,
        micro_batch_size=micro,
        ppo_mini_batch_size=BSZ,
        clip_grad=1e6,  # keep the raw gradient (compared below); the tiny model's norm is far smaller
    )


def update(worker, rollout, rewards, field="token_level_rewards", layout="nested", entropy_scale=1.0):
    batch, advantages = rollout
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0, layout=layout)
    reference_model = engine_cpu.rollout_model(worker)  # the weights the update starts from
    steps = engine_cpu.record_gradients(worker)
    metrics = engine_cpu.update_actor(
        worker,
        batch,
        old_log_probs,
        old_entropy * entropy_scale,
        advantages,
        temperature=1.0,
        layout=layout,
        extra={field: rewards},
    )
    assert len(steps) == 1
    return metrics, steps[0], reference_model


def reference_nll(model, batch, positive, norm="micro"):
    """The authors' term, written out: per micro-batch, mean over its positive response tokens of
    -log p, weighted by the micro-batch's share of the mini-batch's response tokens. norm="global":
    the mean over every positive response token of the mini-batch."""
    P = batch["prompts"].shape[1]
    model.zero_grad(set_to_none=True)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits.float()
    log_probs = torch.log_softmax(logits[:, P - 1 : -1], dim=-1)
    token_log_prob = log_probs.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    mask = batch["response_mask"].bool()
    total_tokens = mask.sum()
    value = torch.zeros(())
    if norm == "global":
        pos_mask = mask & positive.bool().unsqueeze(1)
        value = -(token_log_prob * pos_mask).sum() / pos_mask.sum()
    for start in range(0, BSZ, MICRO) if norm == "micro" else ():
        rows = [i for i in range(start, start + MICRO) if positive[i]]
        n_micro = mask[start : start + MICRO].sum()
        if not rows:
            continue
        pos_mask = mask[rows]
        mean_pos = -(token_log_prob[rows] * pos_mask).sum() / pos_mask.sum()
        value = value + n_micro / total_tokens * mean_pos
    value.backward()
    return value.item(), {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def engine_key(engine_grads, hf_name):
    matches = [k for k in engine_grads if k == hf_name or k.endswith("." + hf_name)]
    assert len(matches) == 1, (hf_name, matches)
    return matches[0]


def assert_grad_equals(engine_grads, reference, scale=1.0, baseline=None):
    worst = 0.0
    for name, ref in reference.items():
        g = engine_grads[engine_key(engine_grads, name)]
        if baseline is not None:
            g = g - baseline[engine_key(baseline, name)]
        torch.testing.assert_close(g, scale * ref, rtol=1e-4, atol=1e-6, msg=name)
        worst = max(worst, ref.abs().max().item())
    assert worst > 0  # the reference gradient is not trivially zero


@pytest.mark.parametrize("layout,field", [("nested", "rm_scores"), ("padded", "token_level_rewards")])
def test_value_and_gradient_match_the_authors_formula(model_dir, rollout, layout, field):
    # nested + rm_scores: what the V1 trainer's update batch holds; padded + token_level_rewards: v0's.
    batch, _ = rollout
    rewards = rewards_for(batch, CORRECT)
    base_metrics, base_grads, _ = update(build(model_dir, "vanilla", 0.0), rollout, rewards, field, layout)
    metrics, grads, model = update(build(model_dir, "vanilla", COEFF), rollout, rewards, field, layout)
    value, ref_grads = reference_nll(model, batch, positive_responses(rewards))
    assert metrics["actor/positive_nll"] == pytest.approx(value, rel=1e-5)
    assert "actor/positive_nll" not in base_metrics
    # the policy-gradient part is the same in both runs; the difference is coeff * grad(term)
    assert metrics["actor/pg_loss"] == pytest.approx(base_metrics["actor/pg_loss"], rel=1e-6)
    assert_grad_equals(grads, ref_grads, scale=COEFF, baseline=base_grads)


@pytest.mark.parametrize("layout,score_field", [("nested", "rm_scores"), ("padded", "token_level_scores")])
def test_with_kl_in_the_reward_responses_count_by_their_reward_before_the_penalty(
    model_dir, rollout, layout, score_field
):
    # algorithm.use_kl_in_reward: verl's apply_kl_penalty writes token_level_rewards = scores - beta * KL
    # (V1 trainer: beside rm_scores; v0: beside token_level_scores), whose sum is never exactly 1.0.
    batch, _ = rollout
    rewards = rewards_for(batch, CORRECT)
    kl = torch.rand(rewards.shape, generator=torch.Generator().manual_seed(1)) * batch["response_mask"]
    penalised = rewards - 0.001 * kl
    assert not positive_responses(penalised).any()
    worker = build(model_dir, "vanilla", COEFF)
    extra = {score_field: rewards, "token_level_rewards": penalised}
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0, layout=layout)
    model = engine_cpu.rollout_model(worker)
    metrics = engine_cpu.update_actor(
        worker, batch, old_log_probs, old_entropy, rollout[1], temperature=1.0, layout=layout, extra=extra
    )
    assert metrics["actor/positive_nll_frac"] == pytest.approx(len(CORRECT) / BSZ)
    value, _ = reference_nll(model, batch, positive_responses(rewards))
    assert metrics["actor/positive_nll"] == pytest.approx(value, rel=1e-5)


def test_zero_when_no_response_is_correct(model_dir, rollout):
    batch, _ = rollout
    rewards = rewards_for(batch, ())
    _, base_grads, _ = update(build(model_dir, "vanilla", 0.0), rollout, rewards)
    metrics, grads, _ = update(build(model_dir, "vanilla", COEFF), rollout, rewards)
    assert metrics["actor/positive_nll"] == 0.0
    for name in grads:
        assert torch.equal(grads[name], base_grads[name]), name


def test_ercs_gate_leaves_the_term_untouched(model_dir, rollout):
    # Old entropies doubled: every ratio is about 0.5, so ERC cuts every token's policy gradient;
    # what is left is exactly the NLL term's gradient, tokens cut by ERC included.
    batch, _ = rollout
    rewards = rewards_for(batch, CORRECT)
    metrics, grads, model = update(build(model_dir, "dapo_erc", COEFF), rollout, rewards, entropy_scale=2.0)
    assert metrics["actor/erc_keep_frac"] == 0.0
    value, ref_grads = reference_nll(model, batch, positive_responses(rewards))
    assert metrics["actor/positive_nll"] == pytest.approx(value, rel=1e-5)
    assert_grad_equals(grads, ref_grads, scale=COEFF)


def test_missing_rewards_stop_the_update_naming_the_fix(model_dir, rollout):
    batch, advantages = rollout
    worker = build(model_dir, "vanilla", COEFF)
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    with pytest.raises(ValueError, match="positive_nll_coeff=0"):
        engine_cpu.update_actor(worker, batch, old_log_probs, old_entropy, advantages, temperature=1.0)


# ---- the formula alone --------------------------------------------------------------------------


def test_normalisation_keeps_the_authors_per_micro_batch_weight():
    torch.manual_seed(0)
    log_prob = -torch.rand(3, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    positive = torch.tensor([True, False, True])
    n_micro, p_micro = mask.sum(), mask[positive].sum()
    mean_pos = -(log_prob * mask)[positive].sum() / p_micro
    # no global information: the authors' agg_loss over the positive rows
    assert positive_nll_loss(log_prob, mask, positive).item() == pytest.approx(mean_pos.item())
    # verl 0.9.1 token-mean: a share of the global mini-batch, like the policy loss
    info = {"dp_size": 4, "batch_num_tokens": 200, "global_batch_size": 48, "loss_scale_factor": None}
    got = positive_nll_loss(log_prob, mask, positive, "token-mean", info)
    assert got.item() == pytest.approx((mean_pos * n_micro * 4 / 200).item())
    # each positive token's weight, relative to a policy-loss token's (dp / N_global): N_micro / P_micro,
    # as in the authors' micro-batch (token-mean over N_micro next to a mean over P_micro)
    weight = got / (mean_pos * p_micro)
    assert (weight / (4 / 200)).item() == pytest.approx((n_micro / p_micro).item())
    # seq-mean-token-mean: mean over positive sequences, times B_micro * dp / global_batch_size
    seq_means = [-(log_prob[i][mask[i]]).mean() for i in (0, 2)]
    got = positive_nll_loss(log_prob, mask, positive, "seq-mean-token-mean", info)
    assert got.item() == pytest.approx((sum(seq_means) / 2 * 3 * 4 / 48).item(), rel=1e-6)
    # no positive response: exactly zero
    assert positive_nll_loss(log_prob, mask, torch.zeros(3, dtype=torch.bool), "token-mean", info).item() == 0.0


def test_positive_means_summed_reward_exactly_one():
    rewards = torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [0, 0.5, 0.5], [0, 0, 0.9]])
    assert positive_responses(rewards).tolist() == [True, False, True, False]


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_coefficient_is_validated(bad):
    with pytest.raises(ValueError, match="positive_nll_coeff"):
        ERCPolicyLossConfig(positive_nll_coeff=bad)


def test_default_is_the_paper_texts_objective():
    assert ERCPolicyLossConfig().positive_nll_coeff == 0.0
    assert math.isfinite(ERCPolicyLossConfig(positive_nll_coeff=0.1).positive_nll_coeff)


# ---- the recipes and the Hydra snippet --------------------------------------------------------

RUNS = [f"{loss}_qwen{size}" for size in ("1.5b", "7b") for loss in ("dapo", "dapo_erc", "gppo", "gppo_erc")]


@pytest.mark.parametrize("name", RUNS)
def test_every_recipe_runs_the_authors_term_and_the_paper_text_is_one_override(name):
    from pathlib import Path

    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    from erc_verl.repro import check

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    cfg = check.compose_recipe(recipes, name, check.PLACEHOLDER_OVERRIDES)
    assert cfg.actor_rollout_ref.actor.policy_loss.positive_nll_coeff == 0.1
    built = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor.policy_loss)
    assert isinstance(built, ERCPolicyLossConfig) and built.positive_nll_coeff == 0.1
    # docs/reproducing.md: the paper text's objective
    off = check.compose_recipe(
        recipes, name, [*check.PLACEHOLDER_OVERRIDES, "actor_rollout_ref.actor.policy_loss.positive_nll_coeff=0"]
    )
    assert OmegaConf.select(off, "actor_rollout_ref.actor.policy_loss.positive_nll_coeff") == 0


def test_hydra_snippet_declares_the_field_at_the_paper_texts_default():
    from pathlib import Path

    from omegaconf import OmegaConf

    import erc_verl

    snippet = Path(erc_verl.__file__).parent / "conf" / "policy_loss" / "erc.yaml"
    assert OmegaConf.to_container(OmegaConf.load(snippet), resolve=True)["positive_nll_coeff"] == 0.0


def test_the_authors_term_depends_on_which_responses_share_a_micro_batch(model_dir, rollout):
    """By design, not a bug: the term is normalised by each micro-batch's positive tokens.

    The same responses in another order put the positives into other micro-batches ([0, 3],
    [4, 5], [1, 2], [6, 7] instead of [0, 1], [2, 3], [4, 5], [6, 7]): verl's token-mean policy
    loss is unchanged, the positive-sample NLL is not. So a layout or token budget that regroups
    the micro-batches trains a slightly different objective; tests/test_layouts.py gives every
    layout the same micro-batches for that reason.
    """
    batch, advantages = rollout
    rewards = rewards_for(batch, CORRECT)
    order = torch.tensor([0, 3, 4, 5, 1, 2, 6, 7])
    regrouped = (batch[order], advantages[order])
    first, _, _ = update(build(model_dir, "vanilla", COEFF), rollout, rewards)
    second, _, _ = update(build(model_dir, "vanilla", COEFF), regrouped, rewards[order])
    assert second["actor/pg_loss"] == pytest.approx(first["actor/pg_loss"], rel=1e-5)
    assert abs(second["actor/positive_nll"] - first["actor/positive_nll"]) > 1e-3 * abs(first["actor/positive_nll"])


# ---- positive_nll_norm=global: one mean over the mini-batch's positive tokens ------------------


def test_global_norm_is_the_mean_over_the_mini_batchs_positive_tokens(model_dir, rollout):
    batch, _ = rollout
    rewards = rewards_for(batch, CORRECT)
    _, base_grads, _ = update(build(model_dir, "vanilla", 0.0), rollout, rewards)
    metrics, grads, model = update(build(model_dir, "vanilla", COEFF, positive_nll_norm="global"), rollout, rewards)
    value, ref_grads = reference_nll(model, batch, positive_responses(rewards), norm="global")
    assert metrics["actor/positive_nll"] == pytest.approx(value, rel=1e-5)
    assert metrics["actor/positive_nll_frac"] == pytest.approx(len(CORRECT) / BSZ)
    assert_grad_equals(grads, ref_grads, scale=COEFF, baseline=base_grads)
    micro_value, _ = reference_nll(model, batch, positive_responses(rewards))
    assert abs(micro_value - value) > 1e-3 * value  # this batch tells the two apart


def test_global_norm_is_independent_of_the_micro_batching_and_micro_is_not(model_dir, rollout):
    """The same responses regrouped and cut into micro-batches of 4 instead of 2: "global" trains
    the same objective (equal term, equal gradient); "micro", the authors', does not."""
    batch, advantages = rollout
    rewards = rewards_for(batch, CORRECT)
    order = torch.tensor([0, 3, 4, 5, 1, 2, 6, 7])
    regrouped = (batch[order], advantages[order])
    runs = {}
    for norm in ("global", "micro"):
        first = update(build(model_dir, "vanilla", COEFF, positive_nll_norm=norm), rollout, rewards)
        second = update(build(model_dir, "vanilla", COEFF, micro=4, positive_nll_norm=norm), regrouped, rewards[order])
        runs[norm] = (first, second)
    (g1, gg1, _), (g2, gg2, _) = runs["global"]
    assert g2["actor/pg_loss"] == pytest.approx(g1["actor/pg_loss"], rel=1e-5)
    assert g2["actor/positive_nll"] == pytest.approx(g1["actor/positive_nll"], rel=1e-5)
    for name, grad in gg1.items():
        torch.testing.assert_close(gg2[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    (m1, _, _), (m2, _, _) = runs["micro"]
    assert abs(m2["actor/positive_nll"] - m1["actor/positive_nll"]) > 1e-3 * abs(m1["actor/positive_nll"])


def test_global_norm_without_the_mini_batch_counts_is_refused():
    from types import SimpleNamespace

    from erc_verl.losses import positive_nll_term

    config = SimpleNamespace(
        policy_loss=ERCPolicyLossConfig(positive_nll_coeff=0.1, positive_nll_norm="global"), global_batch_info={}
    )
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="positive_nll_norm=micro"):
        positive_nll_term(config, -torch.rand(2, 3), mask, torch.ones(2, 3) / 3, "token-mean")
    term, metrics = positive_nll_term(
        config, -torch.rand(2, 3), mask, torch.tensor([[0, 0, 1.0], [0, 0, 0]]), "token-mean", {}, (6.0, 2.0)
    )
    assert term.item() > 0 and metrics["actor/positive_nll_frac"] == 0.5


def test_global_terms_of_any_micro_batching_add_up_to_one_mean():
    torch.manual_seed(1)
    log_prob = -torch.rand(6, 5)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    positive = torch.tensor([True, False, True, True, False, True])
    whole = -(log_prob * (mask & positive.unsqueeze(1))).sum() / (mask & positive.unsqueeze(1)).sum()
    counts = positive_counts(mask, positive)
    assert counts.tolist() == [float((mask & positive.unsqueeze(1)).sum()), 4.0]
    for cuts in ([0, 6], [0, 2, 4, 6], [0, 1, 3, 6]):
        total = sum(
            positive_nll_loss(log_prob[a:b], mask[a:b], positive[a:b], "token-mean", {}, tuple(counts))
            for a, b in zip(cuts, cuts[1:], strict=False)
        )
        assert float(total) == pytest.approx(whole.item(), rel=1e-6), cuts
    # seq-mean-token-mean: the mean over positive responses of their token means
    seq = [-(log_prob[i][mask[i]]).mean() for i in range(6) if positive[i]]
    got = sum(
        positive_nll_loss(log_prob[a:b], mask[a:b], positive[a:b], "seq-mean-token-mean", {}, tuple(counts))
        for a, b in ((0, 3), (3, 6))
    )
    assert float(got) == pytest.approx((sum(seq) / 4).item(), rel=1e-6)


# ---- what counts as positive ----------------------------------------------------------------------


def test_positive_threshold_counts_a_format_bonus_or_an_overlong_penalty():
    rewards = torch.tensor([[0, 0, 1.1], [0, 0, 1.0], [0, 0, 0.8], [0, 0, -1.0]])
    assert positive_responses(rewards).tolist() == [False, True, False, False]  # the authors' == 1.0
    assert positive_responses(rewards, 1.0, "ge").tolist() == [True, True, False, False]
    assert positive_responses(rewards, 0.5, "ge").tolist() == [True, True, True, False]
    assert settings(
        ERCPolicyLossConfig(positive_nll_reward=0.5, positive_nll_compare="ge")
    ).algorithm.positive_rule == (
        0.5,
        "ge",
    )
    assert settings(None).algorithm.positive_rule == (1.0, "eq")


@pytest.mark.parametrize(
    "field,bad",
    [
        ("positive_nll_norm", "mini"),
        ("positive_nll_compare", ">="),
        ("positive_nll_reward", float("nan")),
        ("positive_nll_warn_steps", -1),
        ("positive_nll_warn_steps", 1.5),
    ],
)
def test_positive_nll_settings_are_validated(field, bad):
    with pytest.raises(ValueError, match=field):
        ERCPolicyLossConfig(**{field: bad})


def test_threshold_reaches_the_update(model_dir, rollout):
    """A correct answer scored 1.1 (a format bonus): the authors' == 1.0 finds no positive response,
    positive_nll_compare=ge finds them."""
    batch, _ = rollout
    rewards = rewards_for(batch, CORRECT) * 1.1
    eq, _, _ = update(build(model_dir, "vanilla", COEFF), rollout, rewards)
    ge, _, model = update(build(model_dir, "vanilla", COEFF, positive_nll_compare="ge"), rollout, rewards)
    assert eq["actor/positive_nll"] == 0.0 and eq["actor/positive_nll_frac"] == 0.0
    assert ge["actor/positive_nll_frac"] == pytest.approx(len(CORRECT) / BSZ)
    value, _ = reference_nll(model, batch, positive_responses(rewards, 1.0, "ge"))
    assert ge["actor/positive_nll"] == pytest.approx(value, rel=1e-5)
