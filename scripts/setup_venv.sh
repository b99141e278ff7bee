#!/usr/bin/env bash
# Creates .venv on first use: the CPU build of torch 2.13.0 first (so no resolver ever pulls a
# multi-GB CUDA build), then erc-verl with its pinned verl and the test extras.
# Sourced by scripts/test.sh and scripts/demo.sh; re-running is cheap once the venv exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ERC_VERL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.erc-verl-installed"

if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[setup] installing into $VENV (first use: about two minutes; log: $VENV/install.log)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  LOG="$VENV/install.log"
  {
    "$VENV/bin/python" -m pip install -q --upgrade pip || true
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" &&
    # torch is already satisfied, so this pins verl and installs the rest without touching torch.
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" "torch==2.13.0"
  } >"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; echo "[setup] install failed; see $LOG" >&2; exit 1; }
  touch "$STAMP"
fi
export ERC_VERL_PYTHON="$VENV/bin/python"
