"""Which verl release this package was verified on, checked before anything touches verl."""

from importlib import metadata

# The runtime plumbing wraps verl internals whose shape changes between releases,
# so exactly one release is accepted. Patched forks at other commits use patches/.
SUPPORTED_VERL = "0.9.1"


def installed_verl_version() -> str | None:
    try:
        return metadata.version("verl")
    except metadata.PackageNotFoundError:
        return None


def check_verl_version() -> str:
    found = installed_verl_version()
    if found is None:
        raise ImportError(
            f"erc_verl needs verl=={SUPPORTED_VERL}, but verl is not installed: "
            f"pip install 'verl=={SUPPORTED_VERL}'"
        )
    if found != SUPPORTED_VERL:
        raise ImportError(
            f"erc_verl supports verl=={SUPPORTED_VERL} only; found verl {found}. "
            f"Install the supported release (pip install 'verl=={SUPPORTED_VERL}'), "
            "or apply patches/ to your own verl tree (see patches/README.md)."
        )
    return found
