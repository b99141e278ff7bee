"""Registers erc_verl's CPU rollout backend `hf` with verl, lazily (erc_verl/cpu/rollout.py).

Two entries, both through verl 0.9.1's own extension points, each added right after verl
imports the module that holds it (erc_verl.integration.hooks.after_import), so loading the
plugin imports nothing extra:
  verl.workers.rollout.replica.RolloutReplicaRegistry   "hf" -> a loader returning HFReplica
  verl.workers.rollout.base._ROLLOUT_REGISTRY          ("hf", "async") -> HFServerAdapter
erc_verl.cpu.rollout (torch, transformers) is imported only when a config selects
`actor_rollout_ref.rollout.name=hf`, by verl calling the loader or the adapter lookup.
"""

from .hooks import after_import

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "erc_verl.cpu.rollout.HFServerAdapter"


def _load_hf_replica():
    from erc_verl.cpu.rollout import HFReplica

    return HFReplica


def _register_replica(module) -> None:
    registry = module.RolloutReplicaRegistry
    if registry._registry.get(ROLLOUT_NAME) is not _load_hf_replica:
        registry.register(ROLLOUT_NAME, _load_hf_replica)


def _register_adapter(module) -> None:
    module._ROLLOUT_REGISTRY.setdefault((ROLLOUT_NAME, "async"), ADAPTER_FQN)


def register_hf_rollout() -> None:
    """Idempotent; cheap (imports nothing from verl by itself)."""
    after_import("verl.workers.rollout.replica", _register_replica)
    after_import("verl.workers.rollout.base", _register_adapter)
