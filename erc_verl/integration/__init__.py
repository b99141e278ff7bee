"""Everything erc_verl does to verl itself; the core modules never touch verl's workers.

`install()` runs once per process at `import erc_verl`: it registers the loss modes, then
either trusts a verl tree that carries patches/ or installs the runtime plumbing for the
pinned release (verl_0_9_1.py lists every touch-point). When VERL_PLATFORM=cpu it also makes
the CPU platform resolvable (erc_verl/cpu), and only then.
"""

import os


def install() -> str:
    """Register, then feed the entropies. Returns "patched" or "runtime"."""
    from .registry import register_loss_modes
    from .version import tree_is_patched

    register_loss_modes()
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
        from ..cpu.platform import install_if_selected

        install_if_selected()
    if tree_is_patched():
        return "patched"
    from . import verl_0_9_1

    verl_0_9_1.install()
    return "runtime"
