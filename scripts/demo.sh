#!/usr/bin/env bash
# ERC end to end on CPU in a few minutes: a tiny Qwen2 built locally, warmed up on arithmetic,
# then trained with GRPO through verl's engine actor, once with the vanilla PPO-clip baseline
# and once with dapo_erc, from the same seed. Writes runs/demo/{metrics.jsonl,demo.png,summary.md}.
#   bash scripts/demo.sh                       # defaults (about 3-5 minutes on 2 cores)
#   bash scripts/demo.sh --steps 10 --strict   # any `erc-verl demo --help` option
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_venv.sh
exec "$ERC_VERL_PYTHON" -m erc_verl.repro.cli demo "$@"
