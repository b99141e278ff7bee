#!/usr/bin/env bash
# Apply (or --revert) the ERC patch set of patches/verl-<version>/ to a verl source tree.
#
# usage: scripts/apply_patches.sh [--revert] [--check] VERL_SOURCE_DIR
#
# VERL_SOURCE_DIR is the directory that contains the `verl/` package: a git checkout of verl,
# an unpacked release wheel, or an installed site-packages directory (the `verl/` package
# directory itself is accepted too). The version is read from verl/version/version.
#
# All or nothing: the whole folder is checked before anything is written, so an unsupported
# version, a conflict or a partly patched tree exits non-zero and leaves the tree as it was.
# In a git checkout a patch that no longer applies as is falls back to a 3-way merge
# (`git apply --3way`, which needs the release's blobs in the repository: fetch the release
# tag); if that merge conflicts, the files and the index are restored and the script fails.
# Running it again on a patched tree says so and exits 0 (same for --revert on a clean one).
#
# Exit codes: 0 done or nothing to do (and --help), 1 does not apply / conflict, 2 usage or
# unsupported tree. The series is patches/verl-<version>/ (override the folder with ERC_PATCHES_DIR);
# patches/README.md says what each patch does and why.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PATCHES_ROOT="$(cd "${ERC_PATCHES_DIR:-$REPO_ROOT/patches}" && pwd)"

# usage [STATUS]: the header above; --help prints it to stdout and exits 0, a usage error to stderr (exit 2).
usage() {
    local status="${1:-2}"
    if [ "$status" = 0 ]; then
        sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    else
        sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    fi
    exit "$status"
}

mode=apply
check_only=0
target=""
while [ $# -gt 0 ]; do
    case "$1" in
        --revert) mode=revert ;;
        --check) check_only=1 ;;
        -h | --help) usage 0 ;;
        -*) echo "apply_patches.sh: unknown option $1" >&2; usage ;;
        *)
            [ -z "$target" ] || { echo "apply_patches.sh: one VERL_SOURCE_DIR only" >&2; exit 2; }
            target="$1"
            ;;
    esac
    shift
done
[ -n "$target" ] || usage
command -v git >/dev/null || { echo "apply_patches.sh: git is required (git apply)" >&2; exit 2; }

[ -d "$target" ] || { echo "apply_patches.sh: $target is not a directory" >&2; exit 2; }
target="$(cd "$target" && pwd)"
# Accept the package directory itself (.../site-packages/verl).
if [ ! -f "$target/verl/version/version" ] && [ -f "$target/version/version" ] && [ "$(basename "$target")" = verl ]; then
    target="$(dirname "$target")"
fi
version_file="$target/verl/version/version"
[ -f "$version_file" ] || {
    echo "apply_patches.sh: no verl/version/version under $target (give the directory that contains verl/)" >&2
    exit 2
}
version="$(tr -d '[:space:]' <"$version_file")"
patch_dir="$PATCHES_ROOT/verl-$version"
shopt -s nullglob
patches=("$patch_dir"/[0-9][0-9][0-9][0-9]-*.patch)
shopt -u nullglob
if [ ! -d "$patch_dir" ] || [ ${#patches[@]} -eq 0 ]; then
    supported="$(cd "$PATCHES_ROOT" && ls -d verl-*/ 2>/dev/null | sed 's#verl-##; s#/##' | tr '\n' ' ')"
    echo "apply_patches.sh: verl $version has no patch set (have: ${supported:-none})." >&2
    echo "  For a fork at another commit, apply the nearest folder by hand with 'git am -3' (patches/README.md)." >&2
    exit 2
fi
# Reverting undoes the last patch first.
reversed=()
for ((i = ${#patches[@]} - 1; i >= 0; i--)); do reversed+=("${patches[i]}"); done

cd "$target"
# A git checkout only if $target is its top level; never let git find an enclosing repository
# (a site-packages inside some project's tree), whose root would shift the patch paths.
export GIT_CEILING_DIRECTORIES="$(dirname "$target")"
is_git=0
if [ -e .git ] && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$target" ]; then
    is_git=1
fi

# Files the patches touch; the checks and the plain application work on copies of these.
files=()
while IFS= read -r f; do files+=("$f"); done < <(git apply --numstat "${patches[@]}" | cut -f3 | sort -u)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Apply the patches one after the other (several of them touch the same file, which one
# `git apply` call does not stack reliably) to a copy of the touched files. Prints nothing;
# leaves the result in $work/<name> and the errors in $work/<name>.log.
simulate() {
    local name="$1"
    shift
    local dir="$work/$name" f p
    rm -rf "$dir"
    mkdir -p "$dir"
    for f in "${files[@]}"; do
        if [ -e "$f" ]; then
            mkdir -p "$dir/$(dirname "$f")"
            cp -p "$f" "$dir/$f"
        fi
    done
    : >"$work/$name.log"
    for p in "$@"; do
        (cd "$dir" && GIT_CEILING_DIRECTORIES="$work" git apply $direction_flag "$p") >>"$work/$name.log" 2>&1 || {
            echo "  at $(basename "$p")" >>"$work/$name.log"
            return 1
        }
    done
}
# Copy a simulated result over the target: every touched file becomes its copy (or goes away).
install_result() {
    local dir="$work/$1" f
    for f in "${files[@]}"; do
        if [ -e "$dir/$f" ]; then
            mkdir -p "$(dirname "$f")"
            cp -p "$dir/$f" "$f"
        else
            rm -f "$f"
        fi
    done
}

forward_ok=0
reverse_ok=0
direction_flag="" simulate forward "${patches[@]}" && forward_ok=1
direction_flag="--reverse" simulate reverse "${reversed[@]}" && reverse_ok=1
name="patches/verl-$version (${#patches[@]} patches)"

# The last patch of each folder adds this marker; after a 3-way merge into a fork whose context
# differs, the reverse check fails although the set is in, and the marker still tells.
marker_file="verl/trainer/ppo/core_algos.py"
has_marker=0
grep -q '^POLICY_LOSS_EXTENSIONS_API = ' "$marker_file" 2>/dev/null && has_marker=1

if [ "$mode" = revert ]; then
    if [ $reverse_ok = 1 ]; then
        [ $check_only = 1 ] && { echo "$name: applied; --revert would remove it"; exit 0; }
        install_result reverse
        echo "$name: reverted in $target"
        exit 0
    fi
    if [ $forward_ok = 1 ]; then
        echo "$name: not applied in $target; nothing to revert"
        exit 0
    fi
    echo "apply_patches.sh: $name can neither be reverted nor applied in $target;" >&2
    if [ $has_marker = 1 ] && [ $is_git = 1 ]; then
        echo "  it was merged into this fork with different context (3-way): revert it with git" >&2
        echo "  (git revert <commit>, or git checkout <commit before> -- ${files[*]})." >&2
    else
        echo "  the tree is partly patched or was changed since. Nothing was touched. What failed:" >&2
        sed 's/^/  /' "$work/reverse.log" >&2
    fi
    exit 1
fi

if [ $reverse_ok = 1 ]; then
    echo "$name: already applied in $target"
    exit 0
fi
if [ $forward_ok = 0 ] && [ $has_marker = 1 ]; then
    echo "$name: already applied in $target (merged with different context; found its marker in $marker_file)"
    exit 0
fi
if [ $forward_ok = 1 ]; then
    [ $check_only = 1 ] && { echo "$name: applies cleanly to $target"; exit 0; }
    install_result forward
    echo "$name: applied to $target"
    exit 0
fi
if [ $is_git = 0 ]; then
    echo "apply_patches.sh: $name does not apply to $target (not a git checkout, so no 3-way merge);" >&2
    echo "  nothing was touched. What failed:" >&2
    sed 's/^/  /' "$work/forward.log" >&2
    exit 1
fi

# 3-way merge in the git checkout itself. On a conflict it leaves markers and index entries,
# so keep a copy of the touched files and of the index and put them back unless every patch
# merges cleanly.
mkdir -p "$work/backup"
index_file="$(git rev-parse --git-path index)"
[ -f "$index_file" ] && cp -p "$index_file" "$work/backup.index"
for f in "${files[@]}"; do
    if [ -e "$f" ]; then
        mkdir -p "$work/backup/$(dirname "$f")"
        cp -p "$f" "$work/backup/$f"
    fi
done
restore() {
    install_result backup
    if [ -f "$work/backup.index" ]; then cp -p "$work/backup.index" "$index_file"; else rm -f "$index_file"; fi
}
log="$work/3way.log"
merged=1
for p in "${patches[@]}"; do
    # git apply --3way exits non-zero when a hunk is left with conflict markers.
    if ! git apply --3way "$p" >>"$log" 2>&1; then
        echo "  at $(basename "$p")" >>"$log"
        merged=0
        break
    fi
done
if [ $merged = 1 ]; then
    if [ $check_only = 1 ]; then
        restore
        echo "$name: applies to $target with a 3-way merge"
        exit 0
    fi
    echo "$name: applied to $target with a 3-way merge (the patched files are staged in the index)"
    exit 0
fi
restore
echo "apply_patches.sh: $name conflicts with $target; nothing was changed (files and index restored)." >&2
sed 's/^/  /' "$log" >&2
echo "  See patches/README.md ('On a conflict')." >&2
exit 1
