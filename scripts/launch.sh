#!/usr/bin/env bash
# Launch one paper run of erc-verl on verl 0.9.1:
#
#   scripts/launch.sh [--dry-run] [--val-only CKPT_STEP_DIR] RECIPE [hydra overrides...]
#
# RECIPE is a file name in recipes/ without .yaml (e.g. dapo_erc_qwen7b). Required environment:
#   MODEL_PATH     model folder or Hub id (DeepSeek-R1-Distill-Qwen-1.5B / -7B)
#   TRAIN_FILES    training parquet(s), comma-separated (erc-verl prepare-data)
#   VAL_FILES      eval parquet(s), comma-separated (each benchmark reported separately)
#   CKPT_DIR       folder for checkpoints and metric logs; must be on a filesystem every node sees
#   NNODES         node count (paper: 8)
#   GPUS_PER_NODE  GPUs per node (paper: 8)
# Optional:
#   RAY_ADDRESS    address of a running Ray cluster (required when NNODES > 1)
#   PYTHON         interpreter with verl and erc_verl installed (default: python)
#
# --dry-run             print the command, run nothing
# --val-only DIR        evaluate the checkpoint DIR (a global_step_N folder) with the paper's
#                       32768-token validation length: verl 0.9.1 uses one response length for
#                       training and validation, so the in-training validation runs at 16384.
set -euo pipefail

usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "launch.sh: error: $*" >&2; exit 2; }

DRY_RUN=0
VAL_ONLY=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --val-only) [[ $# -ge 2 ]] || die "--val-only needs a checkpoint folder"; VAL_ONLY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { usage >&2; die "missing RECIPE"; }
RECIPE="${1%.yaml}"
shift

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPES_DIR="$(cd "${ERC_VERL_RECIPES:-$SCRIPT_DIR/../recipes}" && pwd)"
if [[ ! -f "$RECIPES_DIR/$RECIPE.yaml" ]]; then
  available="$(cd "$RECIPES_DIR" && ls -1 *.yaml 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')"
  die "no recipe '$RECIPE' in $RECIPES_DIR (available: $available)"
fi

# Every user-supplied value, named when missing.
missing=()
for var in MODEL_PATH TRAIN_FILES VAL_FILES CKPT_DIR NNODES GPUS_PER_NODE; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  die "missing environment variable(s): ${missing[*]} (see scripts/launch.sh --help)"
fi
for var in NNODES GPUS_PER_NODE; do
  [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer, got '${!var}'"
done
if [[ "$NNODES" -gt 1 && -z "${RAY_ADDRESS:-}" ]]; then
  die "NNODES=$NNODES needs RAY_ADDRESS of a running Ray cluster ('ray start --head' on one node, 'ray start --address=HEAD:6379' on the others)"
fi

# A comma-separated list as a Hydra list of quoted strings (paths may hold Hydra-special characters).
hydra_list() {
  local IFS=','
  local out=() item
  for item in $1; do
    item="${item#"${item%%[![:space:]]*}"}"
    item="${item%"${item##*[![:space:]]}"}"
    [[ -n "$item" ]] && out+=("'$item'")
  done
  local joined
  joined="$(IFS=','; echo "${out[*]}")"
  echo "[$joined]"
}

# The run's name: the recipe's, unless the user overrides trainer.experiment_name.
EXPERIMENT="$RECIPE"
for arg in "$@"; do
  [[ "$arg" == trainer.experiment_name=* ]] && EXPERIMENT="${arg#trainer.experiment_name=}"
done
RUN_DIR="${CKPT_DIR%/}/$EXPERIMENT"

# verl's file logger truncates its file when it opens it, so every launch writes a new one;
# `erc-verl table/plot` read all metrics-*.jsonl of a run folder, later files winning per step.
STAMP="$(date +%Y%m%d-%H%M%S)"
LOG_DIR="$RUN_DIR/logs"
OVERRIDES=()
if [[ -n "$VAL_ONLY" ]]; then
  LOG_DIR="$RUN_DIR/eval32k"
  OVERRIDES+=(
    trainer.val_only=true
    trainer.resume_mode=resume_path
    "trainer.resume_from_path=$VAL_ONLY"
    # erc-spec.md section 5: validation responses up to 32768 tokens.
    data.max_response_length=32768
  )
fi
FILE_LOG="$LOG_DIR/metrics-$STAMP.jsonl"

OVERRIDES=(
  "actor_rollout_ref.model.path=$MODEL_PATH"
  "data.train_files=$(hydra_list "$TRAIN_FILES")"
  "data.val_files=$(hydra_list "$VAL_FILES")"
  "trainer.nnodes=$NNODES"
  "trainer.n_gpus_per_node=$GPUS_PER_NODE"
  "trainer.default_local_dir=$RUN_DIR"
  # The TaskRunner (a Ray actor, maybe on another node) writes the file log: pass the path to it.
  "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$FILE_LOG"
  "${OVERRIDES[@]}"
)

# Load the plugin in this process and every worker (besides the verl.plugins entry point and
# the recipes' runtime_env / model.external_lib): a run without it would train plain PPO.
case ",${VERL_USE_EXTERNAL_MODULES:-}," in
  *,erc_verl,*) ;;
  ,,) export VERL_USE_EXTERNAL_MODULES=erc_verl ;;
  *) export VERL_USE_EXTERNAL_MODULES="$VERL_USE_EXTERNAL_MODULES,erc_verl" ;;
esac
export VERL_FILE_LOGGER_PATH="$FILE_LOG"
[[ -n "${RAY_ADDRESS:-}" ]] && export RAY_ADDRESS

PYTHON="${PYTHON:-python}"
CMD=("$PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPES_DIR" --config-name "$RECIPE" "${OVERRIDES[@]}" "$@")

echo "# recipe: $RECIPES_DIR/$RECIPE.yaml"
echo "# run folder: $RUN_DIR (metrics: $FILE_LOG)"
[[ -n "${RAY_ADDRESS:-}" ]] && echo "# Ray cluster: $RAY_ADDRESS"
echo "VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES VERL_FILE_LOGGER_PATH=$(printf '%q' "$FILE_LOG") \\"
printf '%q ' "${CMD[@]}"
echo
if [[ "$DRY_RUN" -eq 1 ]]; then
  exit 0
fi
mkdir -p "$LOG_DIR"
exec "${CMD[@]}"
