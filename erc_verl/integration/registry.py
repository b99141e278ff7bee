"""The loss modes in verl's policy-loss registry, and what each needs fed.

Registration goes through verl's own `register_policy_loss`; verl's stock losses are left as
they are (the monitor for baseline runs lives in the ppo_loss wrapper, verl_0_9_1.py).
"""

from ..modes import ERC_LOSS_MODES


def register_loss_modes() -> None:
    """Register erc, dapo_erc, gppo (the ungated GPPO baseline) and gppo_erc with verl. Idempotent.

    Called once verl.trainer.ppo.core_algos is loaded (the losses import it).
    """
    from verl.trainer.ppo import core_algos

    from .. import losses

    for name, fn in (
        ("erc", losses.compute_policy_loss_erc),
        ("dapo_erc", losses.compute_policy_loss_dapo_erc),
        ("gppo", losses.compute_policy_loss_gppo),
        ("gppo_erc", losses.compute_policy_loss_gppo_erc),
    ):
        if core_algos.POLICY_LOSS_REGISTRY.get(name) is not fn:
            core_algos.register_policy_loss(name)(fn)


def _get(policy_loss_config, key, default):
    if policy_loss_config is None:
        return default
    return policy_loss_config.get(key, default)


def loss_mode(policy_loss_config) -> str:
    return _get(policy_loss_config, "loss_mode", "vanilla")


def is_erc_mode(policy_loss_config) -> bool:
    return loss_mode(policy_loss_config) in ERC_LOSS_MODES


def monitor_enabled(policy_loss_config) -> bool:
    """entropy_ratio_monitor on a non-ERC mode: log the ratio metrics, change no gradient."""
    return bool(_get(policy_loss_config, "entropy_ratio_monitor", False)) and not is_erc_mode(policy_loss_config)


def loss_wants_entropy(policy_loss_config) -> bool:
    """Whether the update must compute the current and old entropies for this config."""
    return is_erc_mode(policy_loss_config) or monitor_enabled(policy_loss_config)
