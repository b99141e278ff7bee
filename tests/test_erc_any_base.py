"""loss_mode=erc over every token-local base loss: the forward value is the base's, the gradient
is the base's on in-band tokens and exactly zero elsewhere; sequence-level bases are refused."""

import pytest
import torch
from test_losses import actor_config, call, make_batch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn

import erc_verl  # noqa: F401
from erc_verl.losses import entropy_ratio, erc_keep_mask
from erc_verl.modes import SEQUENCE_LEVEL_MODES, TOKEN_LOCAL_MODES

BAND = dict(entropy_ratio_low=0.95, entropy_ratio_high=1.05)


@pytest.mark.parametrize("base", TOKEN_LOCAL_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_erc_over_a_token_local_base(base, seed):
    batch = make_batch(seed, bsz=6, length=16, spread=0.4, entropy_spread=0.08)
    extra = {"dro_beta": 0.1} if base == "dro" else {}  # dro has no default beta
    config = actor_config("erc", erc_base_loss_mode=base, **BAND, **extra)
    torch.manual_seed(seed)  # clip_cov picks its clipped tokens at random among candidates
    loss, grad, metrics = call(POLICY_LOSS_REGISTRY["erc"], batch, config)
    base_fn = POLICY_LOSS_REGISTRY["gppo"] if base == "gppo" else get_policy_loss_fn(base)
    torch.manual_seed(seed)
    ref_loss, ref_grad, _ = call(base_fn, batch, actor_config(base, **BAND, **extra), with_entropy=False)
    keep = erc_keep_mask(entropy_ratio(batch["entropy"], batch["old_entropy"]), batch["response_mask"], 0.95, 1.05)
    assert 0 < int(keep.sum()) < int(batch["response_mask"].sum())  # both kinds of token present
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad[keep], ref_grad[keep], rtol=1e-12, atol=1e-15)
    assert torch.all(grad[~keep] == 0)
    assert "actor/erc_keep_frac" in metrics


@pytest.mark.parametrize("alias, base", [("dapo_erc", "vanilla"), ("gppo_erc", "gppo")])
def test_named_modes_are_erc_over_their_base(alias, base):
    batch = make_batch(3)
    named = call(POLICY_LOSS_REGISTRY[alias], batch, actor_config(alias, **BAND))
    generic = call(POLICY_LOSS_REGISTRY["erc"], batch, actor_config("erc", erc_base_loss_mode=base, **BAND))
    assert torch.equal(named[0], generic[0]) and torch.equal(named[1], generic[1])
    assert named[2] == generic[2]


@pytest.mark.parametrize("base", sorted(SEQUENCE_LEVEL_MODES))
def test_sequence_level_bases_are_refused_with_the_reason(base):
    with pytest.raises(ValueError, match=rf"erc_base_loss_mode='{base}' cannot be gated by ERC: .*Fix"):
        call(POLICY_LOSS_REGISTRY["erc"], make_batch(0), actor_config("erc", erc_base_loss_mode=base))


@pytest.fixture
def user_mode_slot():
    """The test's own registry entry, removed afterwards (verl's registry is process-wide)."""
    yield "test_user_pg"
    POLICY_LOSS_REGISTRY.pop("test_user_pg", None)


def test_a_users_mode_needs_a_token_local_declaration(user_mode_slot):
    from verl.trainer.ppo import core_algos

    @core_algos.register_policy_loss(user_mode_slot)
    def user_pg(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None, **_):
        return core_algos.agg_loss(
            loss_mat=-advantages * log_prob, loss_mask=response_mask, loss_agg_mode=loss_agg_mode
        ), {}

    batch = make_batch(5, entropy_spread=0.08)
    with pytest.raises(ValueError, match=r"not known to be token-local.*erc_token_local_modes=\[test_user_pg\]"):
        call(POLICY_LOSS_REGISTRY["erc"], batch, actor_config("erc", erc_base_loss_mode="test_user_pg"))
    config = actor_config("erc", erc_base_loss_mode="test_user_pg", erc_token_local_modes=["test_user_pg"], **BAND)
    loss, grad, _ = call(POLICY_LOSS_REGISTRY["erc"], batch, config)
    _, ref_grad, _ = call(user_pg, batch, config, with_entropy=False)
    keep = erc_keep_mask(entropy_ratio(batch["entropy"], batch["old_entropy"]), batch["response_mask"], 0.95, 1.05)
    assert torch.equal(grad[keep], ref_grad[keep]) and torch.all(grad[~keep] == 0)
