"""The formulas: the entropy-ratio gate, the GPPO base loss, and ERC around any base loss.

This module is the single source of truth for every ERC formula (docs/algorithm.md, "The token-level rule" and "Base losses").
It knows verl's policy-loss calling convention and nothing of verl's workers.
"""

from collections.abc import Callable
from typing import Any

import torch

from .metrics import entropy_ratio_metrics
from .settings import DEFAULTS, settings


# verl's own functions, looked up at call time: importing verl.trainer.ppo.core_algos from
# here would make `import verl` (which loads this plugin) pull in verl's trainer stack, and
# core_algos loading is what triggers our registration (erc_verl/integration/__init__.py).
def agg_loss(*args, **kwargs):
    from verl.trainer.ppo.core_algos import agg_loss as verl_agg_loss

    return verl_agg_loss(*args, **kwargs)


def compute_policy_loss_vanilla(*args, **kwargs):
    """verl's PPO-clip with clip-higher and dual-clip: the DAPO base loss."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla as verl_vanilla

    return verl_vanilla(*args, **kwargs)


# Added to both entropies so a zero-entropy (one-hot) position gives a finite ratio.
RATIO_EPS = 1e-8
# Same clamp as verl's PPO-clip, so the GPPO ratio matches verl's bit for bit.
LOG_RATIO_CLAMP = 20.0

WIRING_HINT = (
    "On stock verl 0.9.1 `import erc_verl` (or the `verl.plugins` entry point / "
    "VERL_USE_EXTERNAL_MODULES=erc_verl) installs plumbing that passes them; on a verl fork apply "
    "patches/ (bash scripts/apply_patches.sh VERL_DIR). Calling the loss directly: pass "
    "entropy=<current-policy entropy> and old_entropy=<old-policy entropy>, both shaped like log_prob."
)


def entropy_ratio(entropy: torch.Tensor, old_entropy: torch.Tensor) -> torch.Tensor:
    """rho = (H_cur + eps) / (H_old + eps), in float32 and outside autograd.

    float32 because a bf16 ratio rounds 0.999 to 1.0 and flips the band test; detached
    because ERC's keep mask is a boolean gate, never a path for gradient.
    """
    return (entropy.detach().float() + RATIO_EPS) / (old_entropy.detach().float() + RATIO_EPS)


def erc_keep_mask(ratio: torch.Tensor, response_mask: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Response tokens whose entropy ratio lies strictly inside (low, high)."""
    return response_mask.bool() & (ratio > low) & (ratio < high)


def erc_gate(log_prob: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """log_prob with its gradient stopped where keep is False; forward values unchanged.

    A per-token policy loss depends on the parameters only through its own log_prob[t]
    (advantages, old log-probs and IS weights are constants), so stopping the gradient of
    log_prob[t] is exactly loss_t = keep ? loss_t : stop_gradient(loss_t), for any such base
    loss, clip and dual-clip included. The token stays in the aggregation's denominator.
    """
    return torch.where(keep, log_prob, log_prob.detach())


def _clip_bounds(config) -> tuple[float, float, float]:
    clip_ratio = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    clip_ratio_c = config.get("clip_ratio_c", 3.0)
    if not clip_ratio_c > 1.0:
        raise ValueError(f"actor.clip_ratio_c (dual-clip constant) must be > 1, got {clip_ratio_c}")
    return low, high, clip_ratio_c


def _global_batch_info(config) -> dict:
    # verl >= 0.8 normalises over the global mini-batch; older actors have no such field.
    return dict(getattr(config, "global_batch_info", None) or {})


def positive_responses(
    token_level_rewards: torch.Tensor,
    reward: float = DEFAULTS["positive_nll_reward"],
    compare: str = DEFAULTS["positive_nll_compare"],
):
    """(bsz,) bool: the responses whose summed token-level reward is `reward` ("eq", the authors'
    dp_actor test `token_level_rewards.sum(-1) == 1.0`) or at least `reward` ("ge")."""
    total = token_level_rewards.float().sum(dim=-1)
    if compare == "eq":
        return total == reward
    if compare == "ge":
        return total >= reward
    raise ValueError(f"policy_loss.positive_nll_compare must be eq or ge, got {compare!r}")


def positive_counts(response_mask: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """float64 [positive tokens, positive responses with a token] of a batch: what "global" sums
    over the whole mini-batch and every data-parallel rank."""
    pos_mask = response_mask.bool()[positive.bool().reshape(-1)]
    return torch.stack([pos_mask.sum(), (pos_mask.sum(dim=-1) > 0).sum()]).double()


def loss_sum_aggregation(global_batch_info: dict | None) -> bool:
    """Whether a micro-batch's loss terms are shares of the global mini-batch (verl >= 0.8's
    ppo_loss then logs them with SUM aggregation), as opposed to plain micro-batch means."""
    info = global_batch_info or {}
    return (
        int(info.get("dp_size", 1) or 1) > 1
        or info.get("batch_num_tokens") is not None
        or info.get("global_batch_size") is not None
        or info.get("loss_scale_factor") is not None
    )


def positive_nll_loss(
    log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    positive: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    global_batch_info: dict | None = None,
    mini_batch_positives: tuple | None = None,
) -> torch.Tensor:
    """The authors' positive-sample NLL term of one micro-batch, before its coefficient.

    Kwai-Klear/ERC's dp_actor adds, per micro-batch,
    `coeff * agg_loss(-log_prob[positive], response_mask[positive], loss_agg_mode)`: the NLL of
    the correct responses' tokens, aggregated over the micro-batch's positive responses only,
    next to a policy loss aggregated over the micro-batch. With token-mean a positive token
    therefore weighs coeff * N_micro / P_micro relative to one token of the policy loss
    (N_micro response tokens, P_micro of them in positive responses).

    verl >= 0.8 normalises the policy loss over the global mini-batch instead (agg_loss with
    `global_batch_info`: for token-mean sum / batch_num_tokens * dp_size). To keep the authors'
    per-micro-batch weight exactly, the authors' micro-batch aggregate is multiplied by the same
    factor that turns the policy loss's micro-batch aggregate into its global share,
    s = agg_loss(1, mask, global) / agg_loss(1, mask, local) (token-mean:
    N_micro * dp_size / batch_num_tokens; seq-mean-*: B_micro * dp_size / global_batch_size).
    Without global information s = 1, the authors' formula as is.

    mini_batch_positives=(positive tokens, positive responses) of the whole mini-batch over all
    data-parallel ranks selects the "global" normalisation instead: verl's agg_loss over the
    micro-batch's positive rows with those counts as its global totals, so the micro-batches'
    terms add up to one aggregate over every positive token of the mini-batch (token-mean: the
    sum over the micro-batch's positive tokens / P_global * dp_size), whatever the micro-batching.
    docs/algorithm.md ("Positive-sample NLL term") derives both.

    log_prob keeps its graph (the term's gradient is the point); ERC's gate never touches it.
    Returns a scalar; 0 (no graph) when the micro-batch has no positive response tokens.
    """
    mask = response_mask.bool()
    positive = positive.bool().reshape(-1)
    if positive.shape[0] != log_prob.shape[0]:
        raise ValueError(f"positive has {positive.shape[0]} rows, log_prob {log_prob.shape[0]}")
    pos_mask = mask[positive]
    if not bool(pos_mask.any()):
        return torch.zeros((), dtype=torch.float32, device=log_prob.device)
    info = dict(global_batch_info or {})
    if mini_batch_positives is not None:
        tokens, responses = (float(v) for v in mini_batch_positives)
        return agg_loss(
            loss_mat=-log_prob[positive],
            loss_mask=pos_mask,
            loss_agg_mode=loss_agg_mode,
            dp_size=int(info.get("dp_size", 1) or 1),
            batch_num_tokens=tokens,
            global_batch_size=responses,
            loss_scale_factor=info.get("loss_scale_factor"),
        )
    # The authors' agg_loss over the positive rows of the micro-batch (verl's agg_loss without
    # global information is the micro-batch-local aggregate).
    local = agg_loss(loss_mat=-log_prob[positive], loss_mask=pos_mask, loss_agg_mode=loss_agg_mode)
    if not loss_sum_aggregation(info):
        return local
    with torch.no_grad():
        ones = torch.ones_like(log_prob, dtype=torch.float32)
        share = agg_loss(loss_mat=ones, loss_mask=mask, loss_agg_mode=loss_agg_mode, **info)
        whole = agg_loss(loss_mat=ones, loss_mask=mask, loss_agg_mode=loss_agg_mode)
        scale = share / whole
    return local * scale


def missing_rewards_error(coeff: float) -> ValueError:
    return ValueError(
        f"policy_loss.positive_nll_coeff={coeff} needs each response's reward in the actor update "
        "(`token_level_scores`, `rm_scores` or `token_level_rewards`), which did not reach it. Set "
        "actor_rollout_ref.actor.policy_loss.positive_nll_coeff=0 for the paper text's objective."
    )


GLOBAL_NORM_UNAVAILABLE = (
    "policy_loss.positive_nll_norm=global needs the positive-token count of the whole mini-batch over "
    "all data-parallel ranks, which only erc_verl's runtime plumbing of stock verl 0.9.1's FSDP engine "
    "computes (not a patched verl tree, not a direct call without mini_batch_positives). Fix: set "
    "actor_rollout_ref.actor.policy_loss.positive_nll_norm=micro (the authors' normalisation)."
)


def positive_nll_term(
    config,
    log_prob,
    response_mask,
    token_level_rewards,
    loss_agg_mode,
    global_batch_info=None,
    mini_batch_positives=None,
):
    """`(coeff * positive_nll_loss(...), metrics)` for one micro-batch, or `(None, {})` with coeff 0.

    config: the actor config (its policy_loss.positive_nll_*). token_level_rewards: (bsz, T)
    rewards of the micro-batch's responses before any KL penalty (verl's `token_level_scores` or `rm_scores`).
    mini_batch_positives: the mini-batch's global positive counts, required by
    positive_nll_norm=global.
    Metrics, aggregated like verl's `actor/pg_loss` (SUM of global shares, or MEAN of
    micro-batch values): `actor/positive_nll`, the term before its coefficient, so
    coeff * actor/positive_nll is what the term added to the logged loss; and
    `actor/positive_nll_frac`, the fraction of responses counted positive.
    """
    algorithm = settings(getattr(config, "policy_loss", None) if config is not None else None).algorithm
    coeff = algorithm.positive_nll_coeff
    if coeff == 0.0:
        return None, {}
    if token_level_rewards is None:
        raise missing_rewards_error(coeff)
    global_norm = algorithm.positive_nll_norm == "global"
    if global_norm and mini_batch_positives is None:
        raise ValueError(GLOBAL_NORM_UNAVAILABLE)
    if global_batch_info is None:
        global_batch_info = _global_batch_info(config)
    positive = positive_responses(token_level_rewards, *algorithm.positive_rule)
    term = positive_nll_loss(
        log_prob,
        response_mask,
        positive,
        loss_agg_mode,
        global_batch_info,
        mini_batch_positives if global_norm else None,
    )
    # One host transfer for both metrics.
    value, n_positive = torch.stack(
        [term.detach().float().reshape(()), positive.sum().float().to(term.device)]
    ).tolist()
    responses = global_batch_info.get("global_batch_size")
    if global_norm or loss_sum_aggregation(global_batch_info):
        from verl.utils.metric import AggregationType, Metric

        metrics = {"actor/positive_nll": Metric(AggregationType.SUM, value)}
        if responses:
            dp_size = int(global_batch_info.get("dp_size", 1) or 1)
            metrics["actor/positive_nll_frac"] = Metric(AggregationType.SUM, n_positive * dp_size / float(responses))
        else:
            metrics["actor/positive_nll_frac"] = n_positive / max(positive.numel(), 1)
    else:
        metrics = {"actor/positive_nll": value, "actor/positive_nll_frac": n_positive / max(positive.numel(), 1)}
    return coeff * term, metrics


def compute_policy_loss_gppo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
    **_unused,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """GPPO (Klear-Reasoner, arXiv 2508.07629) with the CE-GPPO weights (arXiv 2509.20712).

    Forward value equals PPO-clip with dual-clip. Tokens clipped above 1+eps_h with A > 0 keep
    the gradient beta_high * (1+eps_h) * A * grad(log_prob) (PPO-clip gives 0), tokens below
    1-eps_l with A < 0 keep beta_low * (1-eps_l) * A * grad(log_prob). beta = 1 is GPPO,
    beta = 0 is PPO-clip. The dual-clip branch (A < 0, r > c) stays gradient-free as in verl.
    """
    if config is None:
        raise ValueError("gppo needs the actor config (clip_ratio_low/high, clip_ratio_c)")
    eps_low, eps_high, clip_ratio_c = _clip_bounds(config)
    algorithm = settings(config.policy_loss).algorithm
    beta_low, beta_high = algorithm.gppo_beta_low, algorithm.gppo_beta_high

    log_ratio = torch.clamp(log_prob - old_log_prob, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    # r / sg(r): 1 in the forward pass, d(log_prob) in the backward pass.
    unit = ratio / ratio.detach()
    lower = (1.0 - eps_low) * (1.0 + beta_low * (unit - 1.0))
    upper = (1.0 + eps_high) * (1.0 + beta_high * (unit - 1.0))
    clipped_ratio = torch.where(ratio < 1.0 - eps_low, lower, torch.where(ratio > 1.0 + eps_high, upper, ratio))

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * clipped_ratio
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.minimum(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights

    pg_loss = agg_loss(
        loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **_global_batch_info(config)
    )

    mask = response_mask.bool()
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        pg_clipfrac = ((pg_losses2 > pg_losses1) & mask).sum() / n
        pg_clipfrac_lower = ((clip_pg_losses1 > pg_losses3) & (advantages < 0) & mask).sum() / n
        ppo_kl = (-log_ratio * mask).sum() / n
    metrics = {
        "actor/pg_clipfrac": pg_clipfrac.item(),
        "actor/ppo_kl": ppo_kl.item(),
        "actor/pg_clipfrac_lower": pg_clipfrac_lower.item(),
    }
    return pg_loss, metrics


def erc_band(config) -> tuple[float, float]:
    """(low, high) from the actor config; refuses a config that lacks ERC's fields."""
    erc = settings(getattr(config, "policy_loss", None) if config is not None else None)
    if not erc.declared:
        raise ValueError(
            "An ERC loss mode needs the ERC settings: set "
            "actor_rollout_ref.actor.policy_loss._target_=erc_verl.ERCPolicyLossConfig "
            "(or compose the shipped snippet: 'hydra.searchpath=[pkg://erc_verl.conf]' "
            "+policy_loss@actor_rollout_ref.actor.policy_loss=erc)."
        )
    return erc.band


def monitor_metrics(config, entropy, old_entropy, response_mask, global_batch_info: dict) -> dict:
    """entropy_ratio_monitor on a non-ERC loss: the statistics ERC would log, nothing gated."""
    low, high = erc_band(config)
    return entropy_ratio_metrics(entropy_ratio(entropy, old_entropy), response_mask, low, high, **global_batch_info)


# Callables returning a sentence on why the entropies did not arrive ("" when they know nothing);
# erc_verl's runtime plumbing installs its own (which module bound verl's unwrapped ppo_loss).
WIRING_DIAGNOSES: list = []


def require_entropies(loss_mode: str, entropy, old_entropy, log_prob: torch.Tensor) -> None:
    missing = [name for name, value in (("entropy", entropy), ("old_entropy", old_entropy)) if value is None]
    if missing:
        why = " ".join(d for d in (diagnose() for diagnose in WIRING_DIAGNOSES) if d)
        raise ValueError(
            f"loss_mode={loss_mode!r} needs {' and '.join(missing)}, which did not reach it. "
            + (why + " " if why else "")
            + WIRING_HINT
        )
    for name, value in (("entropy", entropy), ("old_entropy", old_entropy)):
        if value.shape != log_prob.shape:
            raise ValueError(
                f"loss_mode={loss_mode!r}: {name} has shape {tuple(value.shape)}, "
                f"log_prob has {tuple(log_prob.shape)}; both entropies must be per response token."
            )


def with_erc(base_fn: Callable, loss_mode: str) -> Callable:
    """Wrap a verl-convention policy loss so only in-band tokens carry gradient.

    Inputs are the signature: verl's policy-loss keywords plus `entropy` (H_cur, the update's
    forward) and `old_entropy` (H_old, the old-log-prob pass), both (bsz, response_len) from
    erc_verl.entropy.entropy_from_logits. verl 0.9.1's ppo_loss calls a policy loss with a fixed
    keyword set; on stock verl erc_verl's ppo_loss wrapper supplies the two entropies
    (erc_verl/integration/verl_0_9_1.py, `policy_loss_entropies`), on a patched tree verl's own
    ppo_loss does. Outputs are the return value: the base loss and its metrics, plus the
    entropy-ratio metrics (erc_verl.metrics), verl Metric objects when the global batch is known.
    """

    def erc_policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config=None,
        rollout_is_weights: torch.Tensor | None = None,
        *,
        entropy: torch.Tensor | None = None,
        old_entropy: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        low, high = erc_band(config)
        require_entropies(loss_mode, entropy, old_entropy, log_prob)
        ratio = entropy_ratio(entropy, old_entropy)
        keep = erc_keep_mask(ratio, response_mask, low, high)
        pg_loss, metrics = base_fn(
            old_log_prob=old_log_prob,
            log_prob=erc_gate(log_prob, keep),
            advantages=advantages,
            response_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
            **kwargs,
        )
        metrics.update(entropy_ratio_metrics(ratio, response_mask, low, high, keep=keep, **_global_batch_info(config)))
        return pg_loss, metrics

    erc_policy_loss.__name__ = f"compute_policy_loss_{loss_mode}"
    erc_policy_loss.__qualname__ = erc_policy_loss.__name__
    erc_policy_loss.__doc__ = (
        f"{loss_mode}: `{getattr(base_fn, '__name__', base_fn)}` gated by Entropy Ratio Clipping "
        "(arXiv 2512.05591): tokens with entropy ratio outside (low, high) keep their loss value "
        "but contribute no gradient."
    )
    return erc_policy_loss


def erc_base_fn(config) -> Callable:
    """The base loss function of loss_mode=erc, refused unless token-local."""
    # settings() refuses a base ERC cannot gate (erc_verl.settings.erc_base_problem).
    base_mode = settings(config.policy_loss).algorithm.erc_base_loss_mode
    if base_mode == "gppo":
        return compute_policy_loss_gppo
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    return get_policy_loss_fn(base_mode)


def compute_policy_loss_erc(*args, config=None, **kwargs):
    """erc: policy_loss.erc_base_loss_mode (any token-local registered loss) gated by ERC."""
    if config is None:
        raise ValueError("loss_mode=erc needs the actor config (policy_loss.erc_base_loss_mode)")
    return _erc_over(erc_base_fn(config), "erc")(*args, config=config, **kwargs)


_GATED: dict = {}


def _erc_over(base_fn, loss_mode):
    key = (base_fn, loss_mode)
    if key not in _GATED:
        _GATED[key] = with_erc(base_fn, loss_mode)
    return _GATED[key]


compute_policy_loss_dapo_erc = with_erc(compute_policy_loss_vanilla, "dapo_erc")
compute_policy_loss_gppo_erc = with_erc(compute_policy_loss_gppo, "gppo_erc")
