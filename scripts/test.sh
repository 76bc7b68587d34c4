#!/usr/bin/env bash
# Install the toolkit into .venv if needed, then run the fast CPU test suite.
# Slow tests: add `-m slow`; speed regression checks: see tests/benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/compress ] || bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then  # the speed checks' bodies once each, untimed (they must not rot)
    .venv/bin/python -m pytest -q tests/benchmarks -m benchmark --benchmark-disable
fi
