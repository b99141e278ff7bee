"""erc_verl as a policy-loss extension of a verl tree that carries patches/.

patches/verl-*/ add an extension point to verl's core_algos (`register_policy_loss_extension`,
marked by `POLICY_LOSS_EXTENSIONS_API`): the patched trainers, ppo_loss / dp_actor and FSDP
engine ask the registered extensions what the update needs. On such a tree erc_verl installs no
runtime wrappers; it registers the one object below, which answers from the same functions the
runtime plumbing uses:

- wants_entropy / active: erc_verl.settings.ERCSettings.wants_entropy (ERC modes and the
  monitor) and .active (those, or positive_nll_coeff > 0);
- entropy_from_logits: erc_verl.entropy.entropy_from_logits, for every entropy that needs no
  gradient (old-log-prob pass and the update's gate entropy: one formula for H_old and H_cur);
- extra_loss: the monitor's metrics for a non-ERC loss mode and the authors' positive-sample NLL
  term (erc_verl.losses.positive_nll_term), for every loss mode.
The ERC losses themselves get `entropy=` / `old_entropy=` from the patched tree.
"""

from ..settings import settings


class ERCPolicyLossExtension:
    """The extension protocol of patches/ (documented in the patched core_algos)."""

    def active(self, policy_loss_config) -> bool:
        return settings(policy_loss_config).active

    def wants_entropy(self, policy_loss_config) -> bool:
        return settings(policy_loss_config).wants_entropy

    def entropy_from_logits(self, logits):
        from ..entropy import entropy_from_logits

        return entropy_from_logits(logits)

    def extra_loss(self, actor_config, inputs: dict):
        from ..losses import monitor_metrics, positive_nll_term, require_entropies

        erc = settings(actor_config.policy_loss)
        global_batch_info = inputs.get("global_batch_info") or {}
        metrics = {}
        if erc.monitor:
            log_prob = inputs["log_prob"]
            mode = erc.algorithm.loss_mode
            entropy, old_entropy = inputs.get("entropy"), inputs.get("old_entropy")
            require_entropies(f"{mode} with entropy_ratio_monitor", entropy, old_entropy, log_prob)
            metrics.update(
                monitor_metrics(actor_config, entropy, old_entropy, inputs["response_mask"], global_batch_info)
            )
        term, nll_metrics = positive_nll_term(
            actor_config,
            inputs["log_prob"],
            inputs["response_mask"],
            inputs.get("token_level_rewards"),
            inputs.get("loss_agg_mode", "token-mean"),
            global_batch_info,
        )
        metrics.update(nll_metrics)
        return term, metrics


EXTENSION = ERCPolicyLossExtension()


def register_extension(core_algos) -> bool:
    """Register EXTENSION with a patched core_algos; False (nothing done) on a stock tree."""
    register = getattr(core_algos, "register_policy_loss_extension", None)
    if register is None or getattr(core_algos, "POLICY_LOSS_EXTENSIONS_API", None) is None:
        return False
    register(EXTENSION)
    return True
