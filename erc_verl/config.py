"""ERCPolicyLossConfig: verl's PolicyLossConfig plus ERC's fields, the `_target_` Hydra builds.

The fields, their defaults, their documentation and their validation are erc_verl.settings'
(Algorithm and Tooling): this class only makes them verl config fields, so verl builds and
validates them in every worker, and keeps the validated ERCSettings it built.
"""

from dataclasses import field, make_dataclass

from verl.workers.config import PolicyLossConfig

from .settings import ERC_FIELDS, keep_built


def _as_config_field(f):
    # verl's configs hold lists where the frozen settings hold tuples (erc_token_local_modes).
    if isinstance(f.default, tuple):
        return f.name, list, field(default_factory=lambda d=f.default: list(d))
    return f.name, f.type, field(default=f.default)


def _post_init(self):
    parent = getattr(PolicyLossConfig, "__post_init__", None)
    if parent is not None:
        parent(self)
    keep_built(self)


ERCPolicyLossConfig = make_dataclass(
    "ERCPolicyLossConfig",
    [_as_config_field(f) for f in ERC_FIELDS],
    bases=(PolicyLossConfig,),
    namespace={
        "__post_init__": _post_init,
        "__module__": __name__,
        "__doc__": "verl's PolicyLossConfig plus Entropy Ratio Clipping (arXiv 2512.05591): the fields of "
        "erc_verl.settings.Algorithm and Tooling. Select it with `_target_: erc_verl.ERCPolicyLossConfig` "
        "under actor_rollout_ref.actor.policy_loss (the recipes and the shipped Hydra snippet do).",
    },
)
