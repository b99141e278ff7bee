"""Property tests of the ERC loss math over random tensors (no model, no engine)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, compute_policy_loss_vanilla
from verl.utils.metric import Metric
from verl.workers.config import ActorConfig

import erc_verl
from erc_verl import ERCPolicyLossConfig
from erc_verl.losses import entropy_ratio, erc_keep_mask
from erc_verl.metrics import METRIC_NAMES

AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# The widest band the config accepts; every ratio of these batches lies inside it.
OPEN_BAND = dict(entropy_ratio_low=0.5, entropy_ratio_high=2.0)


def actor_config(loss_mode="dapo_erc", clip_low=0.2, clip_high=0.28, clip_c=10.0, **policy_loss):
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio_low=clip_low,
        clip_ratio_high=clip_high,
        clip_ratio_c=clip_c,
        policy_loss=ERCPolicyLossConfig(loss_mode=loss_mode, **policy_loss),
    )


def make_batch(seed, bsz=4, length=12, spread=0.6, entropy_spread=0.1):
    g = torch.Generator().manual_seed(seed)
    old_log_prob = -torch.rand(bsz, length, generator=g, dtype=torch.float64) * 3
    log_prob = (old_log_prob + torch.randn(bsz, length, generator=g, dtype=torch.float64) * spread).requires_grad_()
    advantages = torch.randn(bsz, 1, generator=g, dtype=torch.float64).expand(bsz, length).clone()
    lengths = torch.randint(1, length + 1, (bsz,), generator=g)
    response_mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)
    old_entropy = torch.rand(bsz, length, generator=g, dtype=torch.float64) * 2 + 0.01
    entropy = old_entropy * (1 + torch.randn(bsz, length, generator=g, dtype=torch.float64) * entropy_spread)
    return dict(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        entropy=entropy.clamp(min=0),
        old_entropy=old_entropy,
    )


def call(fn, batch, config, agg="token-mean", with_entropy=True):
    kwargs = {k: v for k, v in batch.items() if k not in ("entropy", "old_entropy")}
    if with_entropy:
        kwargs.update(entropy=batch["entropy"], old_entropy=batch["old_entropy"])
    loss, metrics = fn(**kwargs, loss_agg_mode=agg, config=config)
    (grad,) = torch.autograd.grad(loss, batch["log_prob"], allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(batch["log_prob"])
    return loss.detach(), grad, metrics


seeds = st.integers(min_value=0, max_value=10_000)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, agg=st.sampled_from(AGG_MODES))
def test_open_band_equals_verl_vanilla(seed, agg):
    batch = make_batch(seed)
    config = actor_config(**OPEN_BAND)
    loss, grad, metrics = call(POLICY_LOSS_REGISTRY["dapo_erc"], batch, config, agg)
    ref_loss, ref_grad, ref_metrics = call(compute_policy_loss_vanilla, batch, config, agg, with_entropy=False)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)
    for key, value in ref_metrics.items():
        assert metrics[key] == value
    assert metrics["actor/erc_keep_frac"] == 1.0


@settings(max_examples=25, deadline=None)
@given(seed=seeds, agg=st.sampled_from(AGG_MODES), mode=st.sampled_from(["dapo_erc", "gppo_erc"]))
def test_out_of_band_gives_zero_gradient_and_same_value(seed, agg, mode):
    batch = make_batch(seed)
    # Every ratio is 0.5 or 2.0: outside the paper's band.
    sign = torch.randint(0, 2, batch["old_entropy"].shape, generator=torch.Generator().manual_seed(seed))
    batch["entropy"] = batch["old_entropy"] * torch.where(sign.bool(), 2.0, 0.5).double()
    config = actor_config(mode)
    loss, grad, metrics = call(POLICY_LOSS_REGISTRY[mode], batch, config, agg)
    base = compute_policy_loss_vanilla if mode == "dapo_erc" else POLICY_LOSS_REGISTRY["gppo"]
    ref_loss, ref_grad, _ = call(base, batch, config, agg, with_entropy=False)
    assert torch.equal(loss, ref_loss)
    assert torch.count_nonzero(grad) == 0
    assert ref_grad.abs().sum() > 0  # the base loss did have gradient to remove
    assert metrics["actor/erc_keep_frac"] == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=seeds, agg=st.sampled_from(AGG_MODES), mode=st.sampled_from(["dapo_erc", "gppo_erc"]))
def test_gradient_is_base_gradient_on_kept_tokens_only(seed, agg, mode):
    batch = make_batch(seed, entropy_spread=0.08)
    config = actor_config(mode)
    _, grad, metrics = call(POLICY_LOSS_REGISTRY[mode], batch, config, agg)
    base = compute_policy_loss_vanilla if mode == "dapo_erc" else POLICY_LOSS_REGISTRY["gppo"]
    _, ref_grad, _ = call(base, batch, config, agg, with_entropy=False)
    # Independent reference of the band test, in float64.
    ratio = (batch["entropy"] + 1e-8) / (batch["old_entropy"] + 1e-8)
    keep = batch["response_mask"].bool() & (ratio > 0.95) & (ratio < 1.05)
    torch.testing.assert_close(grad, ref_grad * keep, rtol=0, atol=0)
    n = batch["response_mask"].sum()
    assert metrics["actor/erc_keep_frac"] == pytest.approx((keep.sum() / n).item())


@settings(max_examples=15, deadline=None)
@given(seed=seeds, mode=st.sampled_from(["dapo_erc", "gppo_erc", "gppo"]))
def test_masked_tokens_are_ignored(seed, mode):
    batch = make_batch(seed)
    config = actor_config(mode)
    fn = POLICY_LOSS_REGISTRY[mode]
    loss, grad, metrics = call(fn, batch, config)
    pad = ~batch["response_mask"].bool()
    noisy = dict(batch)
    noise = torch.randn_like(batch["old_log_prob"]) * 5
    noisy["log_prob"] = torch.where(
        pad, batch["log_prob"].detach() + noise, batch["log_prob"].detach()
    ).requires_grad_()
    noisy["old_entropy"] = torch.where(pad, noise.abs() * 100, batch["old_entropy"])
    noisy["advantages"] = torch.where(pad, noise, batch["advantages"])
    loss2, grad2, metrics2 = call(fn, noisy, config)
    assert torch.equal(loss, loss2)
    assert torch.equal(grad, grad2)
    assert torch.count_nonzero(grad[pad]) == 0
    assert metrics == metrics2


def test_bf16_entropies_use_float32_ratio():
    # bf16 values whose ratio is just below / above the bounds: a bf16 division rounds them onto the bound.
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0, 4.0]], dtype=torch.bfloat16)
    cur = torch.tensor([[0.94921875, 0.953125, 1.046875, 1.0546875, 3.796875, 4.1875]], dtype=torch.bfloat16)
    mask = torch.ones_like(old, dtype=torch.bool)
    ratio = entropy_ratio(cur, old)
    assert ratio.dtype == torch.float32
    ref = (cur.double() + 1e-8) / (old.double() + 1e-8)
    expected = (ref > 0.95) & (ref < 1.05)
    assert torch.equal(erc_keep_mask(ratio, mask, 0.95, 1.05), expected)
    # The point of float32: bf16 arithmetic would decide differently on some of these.
    bf16_ratio = (cur + 1e-8) / (old + 1e-8)
    assert not torch.equal((bf16_ratio > 0.95) & (bf16_ratio < 1.05), expected)


def test_bf16_inputs_through_the_loss():
    batch = make_batch(3)
    config = actor_config("dapo_erc")
    lowp = dict(batch, entropy=batch["entropy"].bfloat16(), old_entropy=batch["old_entropy"].bfloat16())
    _, grad, metrics = call(POLICY_LOSS_REGISTRY["dapo_erc"], lowp, config)
    ratio = (lowp["entropy"].double() + 1e-8) / (lowp["old_entropy"].double() + 1e-8)
    keep = batch["response_mask"].bool() & (ratio > 0.95) & (ratio < 1.05)
    _, ref_grad, _ = call(compute_policy_loss_vanilla, batch, config, with_entropy=False)
    assert torch.equal(grad, ref_grad * keep)


def test_no_gradient_flows_through_entropy():
    batch = make_batch(5)
    batch["entropy"] = batch["entropy"].clone().requires_grad_()
    config = actor_config("gppo_erc")
    loss, _ = POLICY_LOSS_REGISTRY["gppo_erc"](
        **{k: v for k, v in batch.items()}, loss_agg_mode="token-mean", config=config
    )
    (g,) = torch.autograd.grad(loss, batch["entropy"], allow_unused=True)
    assert g is None


def per_token_gppo_grad(r, adv, eps_l, eps_h, c, beta_l, beta_h):
    """d(-loss_t)/d(log_prob_t) by cases, written independently of the implementation."""
    g = torch.zeros_like(r)
    pos, neg = adv > 0, adv < 0
    g = torch.where(pos & (r > 1 + eps_h), -adv * (1 + eps_h) * beta_h, g)
    g = torch.where(pos & (r <= 1 + eps_h), -adv * r, g)
    g = torch.where(neg & (r < 1 - eps_l), -adv * (1 - eps_l) * beta_l, g)
    g = torch.where(neg & (r >= 1 - eps_l) & (r * -adv < -adv * c), -adv * r, g)
    return g


@settings(max_examples=25, deadline=None)
@given(seed=seeds, beta_l=st.sampled_from([0.0, 0.5, 1.0]), beta_h=st.sampled_from([0.0, 1.0, 2.0]))
def test_gppo_gradient_matches_the_formula(seed, beta_l, beta_h):
    batch = make_batch(seed, spread=1.5)
    config = actor_config("gppo", clip_low=0.2, clip_high=0.2, gppo_beta_low=beta_l, gppo_beta_high=beta_h)
    loss, grad, _ = call(POLICY_LOSS_REGISTRY["gppo"], batch, config, "token-sum")
    ref_loss, _, _ = call(compute_policy_loss_vanilla, batch, config, "token-sum", with_entropy=False)
    torch.testing.assert_close(loss, ref_loss)  # forward value is PPO-clip's
    r = torch.exp((batch["log_prob"] - batch["old_log_prob"]).detach())
    expected = per_token_gppo_grad(r, batch["advantages"], 0.2, 0.2, 10.0, beta_l, beta_h) * batch["response_mask"]
    torch.testing.assert_close(grad, expected)


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_gppo_with_zero_betas_is_ppo_clip(seed):
    batch = make_batch(seed, spread=1.5)
    config = actor_config("gppo", gppo_beta_low=0.0, gppo_beta_high=0.0)
    _, grad, metrics = call(POLICY_LOSS_REGISTRY["gppo"], batch, config)
    _, ref_grad, ref_metrics = call(compute_policy_loss_vanilla, batch, config, with_entropy=False)
    torch.testing.assert_close(grad, ref_grad)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert metrics[key] == pytest.approx(ref_metrics[key])


def test_erc_mode_without_entropies_says_how_to_wire_them():
    batch = make_batch(1)
    for mode in erc_verl.ERC_LOSS_MODES:
        with pytest.raises(ValueError, match="old_entropy") as err:
            call(POLICY_LOSS_REGISTRY[mode], batch, actor_config(mode), with_entropy=False)
        assert "patches/" in str(err.value) and "import erc_verl" in str(err.value)


def test_erc_mode_with_plain_policy_loss_config_names_the_target():
    from verl.workers.config import PolicyLossConfig

    batch = make_batch(1)
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=PolicyLossConfig(loss_mode="dapo_erc"),
    )
    with pytest.raises(ValueError, match="erc_verl.ERCPolicyLossConfig"):
        call(POLICY_LOSS_REGISTRY["dapo_erc"], batch, config)


def test_stock_losses_stay_verls_own_functions():
    # The plugin registers its three modes and leaves every other entry of verl's registry alone.
    from verl.trainer.ppo import core_algos

    assert core_algos.get_policy_loss_fn("vanilla") is core_algos.compute_policy_loss_vanilla
    for mode, fn in POLICY_LOSS_REGISTRY.items():
        if mode not in erc_verl.REGISTERED_LOSS_MODES:
            assert fn.__module__ == core_algos.__name__, mode


def test_metrics_aggregate_by_tokens_over_micro_batches_and_ranks():
    """Two ranks x two micro-batches of different sizes reduce to the global token fractions."""
    batch = make_batch(21, bsz=8, length=10, entropy_spread=0.1)
    ratio = (batch["entropy"] + 1e-8) / (batch["old_entropy"] + 1e-8)
    mask = batch["response_mask"].bool()
    total = int(mask.sum())
    splits = [(0, 1), (1, 4), (4, 5), (5, 8)]  # rank0: mb0, mb1; rank1: mb0, mb1
    per_rank = [[], []]
    for i, (a, b) in enumerate(splits):
        part = {k: (v[a:b].detach().requires_grad_() if k == "log_prob" else v[a:b]) for k, v in batch.items()}
        config = actor_config("dapo_erc")
        config.global_batch_info.update(dp_size=2, batch_num_tokens=total, global_batch_size=8)
        _, metrics = POLICY_LOSS_REGISTRY["dapo_erc"](**part, loss_agg_mode="token-mean", config=config)
        per_rank[i // 2].append(metrics)
    reduced = {}
    for key in METRIC_NAMES:
        lists = []
        for rank in per_rank:
            m = rank[0][key].init_list()
            for mb in rank:
                m.append(mb[key])
            lists.append(m)
        reduced[key] = Metric.aggregate_dp(lists)
    keep = mask & (ratio > 0.95) & (ratio < 1.05)
    assert reduced["actor/erc_keep_frac"] == pytest.approx(keep.sum().item() / total)
    assert reduced["actor/erc_clip_frac_low"] == pytest.approx((mask & (ratio <= 0.95)).sum().item() / total)
    assert reduced["actor/erc_clip_frac_high"] == pytest.approx((mask & (ratio >= 1.05)).sum().item() / total)
    assert reduced["actor/entropy_ratio_mean"] == pytest.approx(ratio[mask].mean().item(), rel=1e-5)
    assert reduced["actor/entropy_ratio_min"] == pytest.approx(ratio[mask].min().item(), rel=1e-6)
    assert reduced["actor/entropy_ratio_max"] == pytest.approx(ratio[mask].max().item(), rel=1e-6)
    total_frac = sum(reduced[k] for k in ("actor/erc_keep_frac", "actor/erc_clip_frac_low", "actor/erc_clip_frac_high"))
    assert total_frac == pytest.approx(1.0)


def test_our_loss_modes_are_registered_and_take_the_entropy_keywords():
    # Callers (patched verl, direct users) pass the entropies as keywords.
    import inspect

    for mode in erc_verl.REGISTERED_LOSS_MODES:
        signature = inspect.signature(POLICY_LOSS_REGISTRY[mode])
        if mode in erc_verl.ERC_LOSS_MODES:
            # named parameters, or (erc over a chosen base) forwarded through **kwargs
            signature.bind_partial(entropy=None, old_entropy=None)


@pytest.mark.parametrize(
    "global_info", [{}, {"batch_num_tokens": 40, "dp_size": 2}, {"batch_num_tokens": torch.tensor(40)}]
)
def test_erc_metrics_reduce_in_one_host_transfer(monkeypatch, global_info):
    """One device->host transfer per micro-batch: no .item(), one .tolist()."""
    from erc_verl.metrics import entropy_ratio_metrics

    counts = {"item": 0, "tolist": 0}
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counted(name, fn):
        def wrapper(self, *a, **k):
            counts[name] += 1
            return fn(self, *a, **k)

        return wrapper

    ratio = torch.tensor([[0.9, 1.0, 1.2, 1.01], [0.99, 1.5, 1.0, 0.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    monkeypatch.setattr(torch.Tensor, "item", counted("item", item))
    monkeypatch.setattr(torch.Tensor, "tolist", counted("tolist", tolist))
    out = entropy_ratio_metrics(ratio, mask, 0.95, 1.05, **global_info)
    monkeypatch.undo()
    assert counts == {"item": 0, "tolist": 1}
    value = lambda key: out[key].values[0] if hasattr(out[key], "values") else out[key]  # noqa: E731
    share = global_info.get("dp_size", 1) / 40 if global_info else 1 / 5
    assert value("actor/erc_keep_frac") == pytest.approx(2 * share)
    assert value("actor/erc_clip_frac_low") == pytest.approx(1 * share)
    assert value("actor/erc_clip_frac_high") == pytest.approx(2 * share)
    assert value("actor/entropy_ratio_min") == pytest.approx(0.9) and value("actor/entropy_ratio_max") == pytest.approx(
        1.5
    )


def test_mini_batch_keep_fraction_is_a_count_ratio_and_the_first_is_logged_alone():
    from erc_verl.metrics import mini_batch_keep_fractions

    shares = [1 / 54 * n for n in (15, 14, 13, 12)]  # what summing micro-batch shares gives
    summed = sum(shares)
    assert summed != 1.0  # 0.9999999999999999
    out = mini_batch_keep_fractions(
        {
            "actor/erc_keep_frac": [summed, 0.25],
            "actor/erc_keep_count": [54.0, 9.5],  # verl's mean over ranks may halve a count
            "actor/erc_response_tokens": [54.0, 38.0],
            "actor/pg_loss": [0.1, 0.2],
        }
    )
    assert out == {
        "actor/erc_keep_frac": [1.0, 0.25],
        "actor/erc_keep_frac_first_mb": [1.0],
        "actor/pg_loss": [0.1, 0.2],
    }
