#!/usr/bin/env bash
# `make gpu-check` on a GPU node with its own PyTorch and no network, in one shell call:
#   PYTHON=/opt/torch/.venv/bin/python3 WHEELS=.gpu-wheels scripts/gpu_check.sh [benchmarks/gpu_check.py options]
# The wheels of `make gpu-wheels` are installed with --no-index --no-deps into a folder of their own, put first on
# PYTHONPATH: the interpreter's own packages, its torch above all, are never modified. Without WHEELS nothing is
# installed. Then benchmarks/gpu_check.py runs on that interpreter. See docs/gpu-check.md.
set -euo pipefail

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-}
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/geollava-gpu-site}
if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    WHEELS=$(cd "$WHEELS" && pwd)  # named from where the command was typed; the check runs from the repo root
fi
cd "$(dirname "$0")/.."

if [ -n "$WHEELS" ]; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "gpu-check: no wheels in $WHEELS: run \`make gpu-wheels\` on a machine with the registries first" >&2
        exit 2
    fi
    echo "[gpu-check] installing ${#wheels[@]} wheels from $WHEELS into $SITE for $PYTHON (its own packages untouched)"
    start=$(date +%s)
    rm -rf "$SITE"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "${wheels[@]}"
    echo "[gpu-check] installed in $(($(date +%s) - start)) s"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    set -- --wheels "$WHEELS" "$@"
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
