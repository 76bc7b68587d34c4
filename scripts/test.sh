#!/usr/bin/env bash
# The test command: fast CPU suite (slow and benchmark tests run on request).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" -m pytest -q "$@"
