"""The loss modes in verl's policy-loss registry.

Registration goes through verl's own `register_policy_loss`; verl's stock losses are left as
they are (the monitor for baseline runs lives in the ppo_loss wrapper, verl_0_9_1.py). What a
config needs fed (entropies, rewards) is erc_verl.settings.ERCSettings' to answer.
"""


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
