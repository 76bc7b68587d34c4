#!/usr/bin/env bash
# Create .venv and install the toolkit (CPU). torch/torchvision are pinned to the builds
# that run here; everything else comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_install() {
  # keep pip's per-index "Location ... is ignored" chatter (a local mirror quirk) out of the way
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "WARNING: Location" >&2)
}
echo "installing into .venv (torch, timm, smp, onnx, onnxruntime, nncf, openvino, ...)"
pip_install torch==2.14.1 torchvision==0.29.1
pip_install -e ".[test]"
echo "installed: $(.venv/bin/compress --help >/dev/null && echo compress, bench)"
