#!/usr/bin/env bash
# ERC end to end on CPU, through verl's own trainer: a tiny Qwen2 built locally and warmed up on
# addition, then trained with GRPO by `python -m verl.trainer.main_ppo` (CPU rollout backend `hf`),
# once with the DAPO baseline `vanilla` (ERC monitor on) and once with `dapo_erc`, from the same
# warm start and seed. Figure, summary and self-checks come from verl's file logs; the ERC gate
# check is a gradient check inside verl's actor worker. Writes runs/demo/{demo.png,summary.md,checks.json}
# and one run folder per mode. See docs/demo.md.
#   bash scripts/demo.sh                       # defaults (7.5 minutes measured on a busy 2-core machine)
#   bash scripts/demo.sh --steps 10 --strict   # any `scripts/erc-verl demo --help` option
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_venv.sh
exec "$ERC_VERL_PYTHON" -m erc_verl.cli demo "$@"
