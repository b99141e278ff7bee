"""Everything erc_verl does to verl itself; the core modules never touch verl's workers.

`install()` runs once per process at `import erc_verl`, inside verl's own `import verl`, so it
only registers after-import hooks (hooks.py):
- verl.trainer.ppo.core_algos loaded -> our loss modes are registered with verl's
  `register_policy_loss` (registry.py);
- verl's loss, worker, engine and v0-trainer modules loaded -> the runtime plumbing wraps them
  (verl_0_9_1.py lists every touch-point), unless the tree carries patches/, which feeds the
  entropies in source;
- omegaconf loaded -> the Hydra snippet's `${erc_verl.default:NAME}` resolves (erc_verl.settings).
The CPU runtime (erc_verl/cpu) is a plugin of its own and registers itself; nothing here imports it.
"""

from ..settings import register_resolver
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
    after_import("omegaconf", register_resolver)  # the Hydra snippet's ${erc_verl.default:NAME}
    # The bound on DAPO dynamic sampling and the Ulysses check wait for verl to import their modules.
    from .dynamic_sampling import install as _bound_dynamic_sampling
    from .ulysses_check import install as _check_ulysses_attention

    _bound_dynamic_sampling()
    _check_ulysses_attention()
    from . import driver_watch, verl_0_9_1

    verl_0_9_1.install()
    driver_watch.install()
