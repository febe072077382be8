#!/usr/bin/env bash
# benchmarks/gpu_check.sh OUTDIR [--cpu-dry-run] [--parts a,b,...] [--budget-s N]
#
# ember's CUDA paths checked and timed in one time-boxed command: `python -m benchmarks.gpu_check` (see
# docs/performance.md, "The GPU check"), after setting up what it needs from the repository:
#   Python: $EMBER_PYTHON; else .venv/bin/python when it has ember's packages; else python3, with the wheels
#           carried in .gpu-carry/wheels installed into a folder of /tmp when python3 lacks them (the lent GPU
#           machine: torch preinstalled, no network); else `make setup` (needs the package registry).
#   Data:   $EMBER_DATA; else .gpu-carry/fashion-mnist when it is there; else ember's own search order.
# benchmarks/gpu_carry.sh prepares .gpu-carry/ (the wheels, FashionMNIST, the commit) where a registry is at hand.
set -u
cd "$(dirname "$0")/.." || exit 2
CARRY=${EMBER_GPU_CARRY:-.gpu-carry}
NEEDS="import torch, torchvision, ignite, tensorboard, tqdm, numpy"
has() { "$1" -c "$NEEDS" >/dev/null 2>&1; }

if [ -n "${EMBER_PYTHON:-}" ]; then
    PY=$EMBER_PYTHON
elif [ -x .venv/bin/python ] && has .venv/bin/python; then
    PY=.venv/bin/python
else
    PY=$(command -v python3 || echo python3)
    if ! has "$PY" && ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
        SITE=${TMPDIR:-/tmp}/ember-gpu-site
        echo "gpu_check: installing the carried wheels into $SITE: $(cd "$CARRY/wheels" && echo *.whl)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$CARRY"/wheels/*.whl || { echo "gpu_check: installing $CARRY/wheels failed" >&2; exit 2; }
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! has "$PY"; then
        echo "gpu_check: $PY lacks ember's packages; setting up .venv with \`make setup\` (needs the package registry)"
        if make setup; then
            PY=.venv/bin/python
        else
            echo "gpu_check: make setup failed; on a machine without a registry run benchmarks/gpu_carry.sh where" \
                 "one is at hand and bring $CARRY along" >&2
            exit 2
        fi
    fi
fi
if [ -z "${EMBER_DATA:-}" ] && [ -f "$CARRY/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
    export EMBER_DATA="$PWD/$CARRY/fashion-mnist"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check "$@"
