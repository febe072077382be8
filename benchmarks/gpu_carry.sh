#!/usr/bin/env bash
# benchmarks/gpu_carry.sh [DEST]: prepare DEST (default .gpu-carry/, ignored by git) for benchmarks/gpu_check.sh
# on the lent GPU machine, whose image has torch, torchvision, tensorboard, tqdm, lightning and pytest but no
# pytorch-ignite, and no network: run it here (a package registry at hand), then name DEST in the device
# tool's `carry` (docs/performance.md, "The GPU check", gives the whole call). It writes
#   DEST/wheels/         the wheels the image lacks, for its Python 3.12 (pytorch-ignite at constraints.txt's
#                        version; $EMBER_CARRY_WHEELS names others instead; EMBER_CARRY_NO_WHEELS=1: none)
#   DEST/fashion-mnist/  FashionMNIST's four .gz files, from $EMBER_DATA or Debian's dataset-fashion-mnist
#   DEST/COMMIT          the commit the tree is at (the GPU machine gets the files without .git)
# and checks that what would travel (tracked and untracked-not-ignored files, plus DEST) is under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-${EMBER_GPU_CARRY:-.gpu-carry}}
LIMIT_MIB=${EMBER_CARRY_LIMIT_MIB:-64}
if [ -n "${EMBER_PYTHON:-}" ]; then PY=$EMBER_PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
WHEELS=${EMBER_CARRY_WHEELS:-$(grep -i '^pytorch-ignite==' constraints.txt)}
SRC=${EMBER_DATA:-/usr/share/datasets/fashion-mnist}
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

inside() { case "$(realpath -m "$DEST")" in "$PWD"/*) return 0 ;; *) return 1 ;; esac; }
if inside && git rev-parse --git-dir >/dev/null 2>&1 && ! git check-ignore -q "$DEST/x"; then
    echo "gpu_carry: $DEST is not ignored by git, so it would travel twice and be committable; add /$DEST/ to .gitignore" >&2
    exit 1
fi
for f in $FILES; do
    [ -f "$SRC/$f.gz" ] || [ -f "$SRC/$f" ] || {
        echo "gpu_carry: FashionMNIST's $f(.gz) is not in $SRC; set EMBER_DATA to the folder holding the four files" \
             "(or install Debian's dataset-fashion-mnist)" >&2
        exit 1
    }
done
rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/fashion-mnist"
if [ "${EMBER_CARRY_NO_WHEELS:-0}" != 1 ]; then
    # shellcheck disable=SC2086  # WHEELS is a list of requirements
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST/wheels" $WHEELS
fi
for f in $FILES; do
    if [ -f "$SRC/$f.gz" ]; then cp "$SRC/$f.gz" "$DEST/fashion-mnist/"; else gzip -c "$SRC/$f" >"$DEST/fashion-mnist/$f.gz"; fi
done
if git rev-parse --git-dir >/dev/null 2>&1; then
    commit=$(git rev-parse --short HEAD)
    [ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit (with uncommitted changes)"
    echo "$commit" >"$DEST/COMMIT"
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk 'END {print $1}')
else
    echo unknown >"$DEST/COMMIT"
    tree=0
fi
carry=$(du -sb "$DEST" | cut -f1)
total=$((tree + carry))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "gpu_carry: $DEST holds $(cd "$DEST/wheels" && ls | tr '\n' ' ')and FashionMNIST ($(mib "$carry")); with the" \
     "tree, $(mib "$total") would travel (limit $LIMIT_MIB MiB)"
if [ "$total" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_carry: over the device tool's limit of $LIMIT_MIB MiB: remove large untracked files from the tree" >&2
    exit 1
fi
