#!/usr/bin/env bash
# The whole test suite, on CPU. Installs what it needs into .venv on first use.
#   bash scripts/test.sh                 # everything, slow tests included
#   bash scripts/test.sh -m "not slow"   # the quick part
#   bash scripts/test.sh tests/test_install.py -m slow   # install steps resolved by pip (needs PyPI)
# For the CPU build of torch on first use (PyPI's Linux torch is the CUDA build, several GB):
#   ERC_VERL_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/test.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_venv.sh
exec "$ERC_VERL_PYTHON" -m pytest -q -ra --durations=25 "$@"
