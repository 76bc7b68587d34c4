#!/usr/bin/env bash
# Install the toolkit into .venv if needed, then run the fast CPU test suite.
# Slow tests: add `-m slow`; speed regression checks: see tests/benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/compress ] || bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
