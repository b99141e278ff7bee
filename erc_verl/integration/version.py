"""Which verl release this package was verified on, checked before anything touches verl."""

from importlib import metadata

# The runtime plumbing wraps verl internals whose shape changes between releases,
# so exactly one release is accepted. Patched forks at other commits use patches/.
SUPPORTED_VERL = "0.9.1"
# Releases patches/ has a folder for. A tree carrying those patches is accepted at these.
PATCH_SET_VERSIONS = ("0.7.1", "0.9.1")


def installed_verl_version() -> str | None:
    try:
        return metadata.version("verl")
    except metadata.PackageNotFoundError:
        return None


def check_verl_version() -> str:
    found = installed_verl_version()
    if found is None:
        raise ImportError(
            f"erc_verl needs verl=={SUPPORTED_VERL}, but verl is not installed: pip install 'verl=={SUPPORTED_VERL}'"
        )
    if found != SUPPORTED_VERL and not (found in PATCH_SET_VERSIONS and tree_is_patched()):
        raise ImportError(
            f"erc_verl supports verl=={SUPPORTED_VERL} only; found verl {found}. "
            f"Install the supported release (pip install 'verl=={SUPPORTED_VERL}'), "
            "or apply patches/ to your own verl tree (see patches/README.md)."
        )
    return found


def tree_is_patched() -> bool:
    """True when the installed verl carries patches/ (it then feeds entropies itself)."""
    from verl.trainer.ppo import core_algos

    # patches/ define this marker in core_algos; such a tree calls the policy-loss extension that
    # erc_verl registers (integration/patched_tree.py), and the runtime plumbing stays out of the way.
    if getattr(core_algos, "POLICY_LOSS_EXTENSIONS_API", None) is not None:
        return True
    if getattr(core_algos, "POLICY_LOSS_ENTROPY_KWARGS", None) is not None:
        # The first patch series (before the extension point): feeding it again at run time
        # would pass the entropies twice, and it cannot take erc_verl's entropy kernel.
        raise ImportError(
            "This verl tree carries an older erc_verl patch series (marker POLICY_LOSS_ENTROPY_KWARGS). "
            "Re-apply the current one: revert the old series in your fork (git revert, or "
            "scripts/apply_patches.sh --revert from the erc-verl checkout that applied it), then "
            "bash scripts/apply_patches.sh VERL_DIR (patches/README.md)."
        )
    return False
