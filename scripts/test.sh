#!/usr/bin/env bash
# The whole test suite, on CPU. Installs what it needs into .venv on first use.
#   bash scripts/test.sh                 # everything, slow tests included
#   bash scripts/test.sh -m "not slow"   # the quick part
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_venv.sh
exec "$ERC_VERL_PYTHON" -m pytest -q -ra "$@"
