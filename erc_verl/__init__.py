"""Entropy Ratio Clipping (arXiv 2512.05591) for verl.

Importing this package is all it takes. verl imports it in every process (driver and Ray
workers) through the `verl.plugins` entry point or `VERL_USE_EXTERNAL_MODULES=erc_verl`, while
`import verl` is still running, so this does only cheap things: it checks the verl release and
arranges, through after-import hooks, that the moment verl's own modules load, the loss modes
`dapo_erc`, `gppo` and `gppo_erc` are registered and (on stock verl) the plumbing that feeds
them the current and old-policy entropy is installed. The layers (core, integration/, cpu/,
rehearsal/ and repro/, cli.py): docs/architecture.md.
"""

from .integration.version import SUPPORTED_VERL, check_verl_version
from .modes import ERC_LOSS_MODES, REGISTERED_LOSS_MODES


def _load() -> None:
    # verl imports plugins inside `import verl` and logs their errors only at DEBUG
    # (verl/__init__.py): say it at WARNING too, with erc_verl's name and the verl release.
    try:
        check_verl_version()
        from .integration import install

        install()
    except Exception as exc:
        import logging

        from .integration.version import installed_verl_version

        logging.getLogger("erc_verl").warning(
            "erc_verl failed to load with verl %s (erc_verl supports verl %s): %s",
            installed_verl_version(),
            SUPPORTED_VERL,
            exc,
        )
        raise


_load()

__version__ = "0.1.0"
__all__ = [
    "ERCPolicyLossConfig",
    "ERC_LOSS_MODES",
    "REGISTERED_LOSS_MODES",
    "SUPPORTED_VERL",
    "PLUMBING",
]


def __getattr__(name):
    # Loaded on first use: importing verl's config classes at plugin load costs ~1.5 s and
    # ~230 modules in processes that may never build an actor config.
    if name == "ERCPolicyLossConfig":
        from .config import ERCPolicyLossConfig

        return ERCPolicyLossConfig
    if name == "PLUMBING":
        from .integration import plumbing

        return plumbing()
    raise AttributeError(f"module 'erc_verl' has no attribute {name!r}")
