#!/usr/bin/env bash
# Install the toolkit into .venv if needed, then run the fast CPU test suite.
# Slow tests: add `-m slow`; speed regression checks: see tests/benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/compress ] || bash scripts/setup.sh
tmp="${TMPDIR:-/tmp}"
free_mb=$(df -Pm "$tmp" | awk 'NR==2 {print $4}')
if [ "${free_mb:-0}" -lt 2048 ]; then  # the suite writes small checkpoints into $tmp
    echo "warning: only ${free_mb} MiB free in $tmp; tests fail with 'No space left on device' below ~2 GB" >&2
fi
# NNCF builds its torch extension on first use (per venv path: a fresh clone rebuilds it);
# on a loaded 2-core machine that takes over NNCF's default 60 s load limit
export NNCF_EXTENSION_LOAD_TIMEOUT=${NNCF_EXTENSION_LOAD_TIMEOUT:-600}
# ... into this venv's own folder: a build killed elsewhere (another checkout, Ctrl-C) leaves a
# lock in torch's shared ~/.cache/torch_extensions that would make this run wait until the limit
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then  # the speed checks' bodies once each, untimed (they must not rot)
    .venv/bin/python -m pytest -q tests/benchmarks -m benchmark --benchmark-disable
fi
