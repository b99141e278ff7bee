#!/usr/bin/env bash
# Creates .venv on first use: torch 2.13.0 first, then erc-verl with its pinned verl and the
# test and plots extras (tests and the demo need both). Sourced by scripts/test.sh and
# scripts/demo.sh; re-running is cheap once the venv exists.
#
# Which torch build arrives depends on the index: PyPI serves the CUDA build of torch for Linux
# (several GB). For the CPU build (about 200 MB), name PyTorch's CPU wheel index:
#   ERC_VERL_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/test.sh
# It is passed to the torch step only, as pip's --index-url. Unset: pip's configured index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ERC_VERL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.erc-verl-installed"

if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[setup] installing into $VENV (first use: a few minutes; log: $VENV/install.log)" >&2
  if [ -n "${ERC_VERL_TORCH_INDEX_URL:-}" ]; then echo "[setup] torch from $ERC_VERL_TORCH_INDEX_URL" >&2; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  LOG="$VENV/install.log"
  {
    "$VENV/bin/python" -m pip install -q --upgrade pip || true
    "$VENV/bin/python" -m pip install -q ${ERC_VERL_TORCH_INDEX_URL:+--index-url "$ERC_VERL_TORCH_INDEX_URL"} "torch==2.13.0" &&
    # torch is already satisfied, so this pins verl and installs the rest without touching torch.
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test,plots]" "torch==2.13.0"
  } >"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; echo "[setup] install failed; see $LOG" >&2; exit 1; }
  touch "$STAMP"
fi
export ERC_VERL_PYTHON="$VENV/bin/python"
