#!/usr/bin/env bash
# LiteRT for `compress export --litert`: the converter (litert-torch) cannot be installed
# beside the toolkit (it pins older pydantic / typing-extensions than the toolkit's trackers
# need, and brings JAX), so it gets its own venv, .venv-litert (torch, the toolkit,
# litert-torch), which the export runs as a subprocess; the interpreter (ai-edge-litert)
# goes into the toolkit's .venv (the litert extra). Another converter interpreter:
# SEGCOMPRESS_LITERT_PYTHON=/path/to/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/compress ] || bash scripts/setup.sh
[ -x .venv-litert/bin/python ] || "$PY" -m venv .venv-litert
pip_install() {
  "$1" -m pip install -q "${@:2}" 2> >(grep -v "WARNING: Location" >&2)
}
echo "installing the LiteRT converter into .venv-litert (torch, the toolkit, litert-torch)"
pip_install .venv-litert/bin/python torch==2.14.1 torchvision==0.29.1
pip_install .venv-litert/bin/python -e . litert-torch
echo "installing the LiteRT interpreter into .venv (segcompress[litert])"
pip_install .venv/bin/python -e ".[litert]"
echo "installed: $(.venv-litert/bin/python -c 'import litert_torch; print("litert-torch", litert_torch.__version__)')"
