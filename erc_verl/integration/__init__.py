"""Everything erc_verl does to verl itself; the core modules never touch verl's workers.

`install()` runs once per process at `import erc_verl`, inside verl's own `import verl`, so it
only registers after-import hooks (hooks.py):
- verl.trainer.ppo.core_algos loaded -> our loss modes are registered with verl's
  `register_policy_loss` (registry.py);
- verl's loss, worker, engine and v0-trainer modules loaded -> the runtime plumbing wraps them
  (verl_0_9_1.py lists every touch-point), unless the tree carries patches/, which feeds the
  entropies in source;
- VERL_PLATFORM=cpu only -> the CPU platform of erc_verl/cpu is made resolvable.
"""

import os

from .hooks import after_import


def _register(core_algos) -> None:
    from .registry import register_loss_modes

    register_loss_modes()
    # A tree carrying patches/ asks its policy-loss extensions instead of being wrapped (patched_tree.py).
    from .patched_tree import register_extension

    register_extension(core_algos)
    # An ERC loss that gets no entropies names the module that bound verl's unwrapped ppo_loss.
    from .. import losses
    from .verl_0_9_1 import wiring_diagnosis

    losses.WIRING_DIAGNOSES[:] = [wiring_diagnosis]


def plumbing() -> str:
    """ "patched" when the installed verl carries patches/, else "runtime" (the wrappers)."""
    from .version import tree_is_patched

    return "patched" if tree_is_patched() else "runtime"


def install() -> None:
    """Arrange registration and plumbing for when verl's modules load. Idempotent, cheap."""
    after_import("verl.trainer.ppo.core_algos", _register)
    # The `hf` CPU rollout backend (imports erc_verl/cpu/rollout.py only when a config selects
    # it) and the bound on DAPO dynamic sampling; both wait for verl to import their modules.
    from .dynamic_sampling import install as _bound_dynamic_sampling
    from .rollout_hf import register_hf_rollout
    from .ulysses_check import install as _check_ulysses_attention

    register_hf_rollout()
    _bound_dynamic_sampling()
    _check_ulysses_attention()
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
        from ..cpu.platform import install_if_selected

        install_if_selected()
    from . import driver_watch, verl_0_9_1

    verl_0_9_1.install()
    driver_watch.install()
