"""Entropy Ratio Clipping (arXiv 2512.05591) for verl.

Importing this package is all it takes: it checks the verl release, registers the loss
modes `dapo_erc`, `gppo` and `gppo_erc` in verl's policy-loss registry, and (on stock verl)
installs the plumbing that feeds current and old-policy entropy to them. verl imports it in
every process through the `verl.plugins` entry point or `VERL_USE_EXTERNAL_MODULES=erc_verl`.

Layout (docs/architecture.md):
  config.py, losses.py, entropy.py, metrics.py   the plugin core: settings and formulas
  integration/                                    every place erc_verl touches verl
  cpu/                                            CPU platform, rollout backend, demo (opt-in)
  repro/                                          recipes' tools: check, data, reward, results, cli
"""

from .integration.version import SUPPORTED_VERL, check_verl_version

check_verl_version()

from .config import ERC_LOSS_MODES, REGISTERED_LOSS_MODES, ERCPolicyLossConfig  # noqa: E402
from .integration import install as _install  # noqa: E402

PLUMBING = _install()

__version__ = "0.1.0"
__all__ = [
    "ERCPolicyLossConfig",
    "ERC_LOSS_MODES",
    "REGISTERED_LOSS_MODES",
    "SUPPORTED_VERL",
    "PLUMBING",
]
