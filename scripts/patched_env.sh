#!/usr/bin/env bash
# Builds a venv holding verl==VERSION with patches/verl-VERSION/ applied, and erc_verl on top.
#
# usage: bash scripts/patched_env.sh VERSION        (0.7.1 or 0.9.1)
#
# The venv is $ERC_PATCHED_VENV_ROOT/.venv-patched-VERSION (default: the repo root). Steps:
# torch==2.11.0 first, alone, as scripts/setup_venv.sh installs it (ERC_VERL_TORCH_INDEX_URL
# picks the index), then the release wheel of verl with its dependencies, then scripts/apply_patches.sh on the installed package (the
# site-packages case of that script), then erc_verl: for 0.9.1 with its dependencies and the
# test extra (TransferQueue, which the V1 trainer imports), for 0.7.1 with `--no-deps`.
# Rebuilt only when the patch folder, this script or pyproject.toml changed. The last line of
# stdout is the venv's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${1:?usage: patched_env.sh VERSION}"
PATCH_DIR="$ROOT/patches/verl-$VERSION"
[ -d "$PATCH_DIR" ] || { echo "patched_env.sh: no $PATCH_DIR" >&2; exit 2; }
VENV="${ERC_PATCHED_VENV_ROOT:-$ROOT}/.venv-patched-$VERSION"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.erc-verl-patched"
# What the environment was built from: a change to any of it rebuilds verl's part.
want="$(cat "$PATCH_DIR"/*.patch "${BASH_SOURCE[0]}" "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" |
  sha256sum | cut -d' ' -f1)"
TORCH_PIN="torch==2.11.0"  # the one torch of the project's environments (docs/install.md)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    echo "$VENV/bin/python"
    exit 0
fi
log() { echo "[patched_env $VERSION] $*" >&2; }
# pip warns about every local index folder it skips; show the rest of its output.
pip_q() {
    local rc=0
    "$VENV/bin/python" -m pip install -q "$@" >"$VENV/pip.log" 2>&1 || rc=$?
    grep -v "is neither a file nor a directory" "$VENV/pip.log" >&2 || true
    return $rc
}

[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
rm -f "$STAMP"
pip_q --no-deps ${ERC_VERL_TORCH_INDEX_URL:+--index-url "$ERC_VERL_TORCH_INDEX_URL"} "$TORCH_PIN"
case "$VERSION" in
    0.9.1)
        # The main .venv's pins (requirements/constraints.txt; its verl is stock 0.9.1), so a
        # patched-vs-runtime comparison differs in verl's patched files only: verl's own
        # dependencies plus what its engine workers and trainer modules import on CPU.
        extra=(fastapi uvicorn cachetools)
        constraints=(-c "$ROOT/requirements/constraints.txt")
        ;;
    0.7.1)
        # verl 0.7.1 pins numpy<2; `datasets` then needs a pyarrow built for numpy 1.
        extra=("numpy<2" "pyarrow==20.0.0")
        constraints=()
        ;;
    *) extra=(); constraints=() ;;
esac
log "installing verl==$VERSION and its dependencies"
# --force-reinstall of verl alone: a rebuild after a patch changed must start from pristine files.
pip_q "$TORCH_PIN" "verl==$VERSION" "${extra[@]}" "${constraints[@]}"
pip_q --no-deps --force-reinstall "verl==$VERSION"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
log "applying patches/verl-$VERSION to $SITE"
bash "$ROOT/scripts/apply_patches.sh" "$SITE" >&2
# erc_verl with its own dependencies (math-verify, ...) and TransferQueue, which verl 0.9.1's V1
# trainer imports but does not declare (pinned in the test extra); torch stays at its pin.
case "$VERSION" in
    0.9.1) pip_q -e "$ROOT[test]" "$TORCH_PIN" "verl==$VERSION" "${constraints[@]}" ;;
    *) pip_q --no-deps -e "$ROOT" ;;
esac
"$VENV/bin/python" - <<'EOF' >&2
import erc_verl
assert erc_verl.PLUMBING == "patched", erc_verl.PLUMBING
print("[patched_env] erc_verl imports with PLUMBING =", erc_verl.PLUMBING)
EOF
echo "$want" >"$STAMP"
echo "$VENV/bin/python"
