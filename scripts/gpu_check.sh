#!/usr/bin/env bash
# One-command GPU verification (NVIDIA): installs the GPU extra, trains nothing, exports the
# student (ONNX f32 + the TensorRT INT8 QDQ graph, and FP16/INT8 engines where TensorRT is
# installed), then scores and times PyTorch CUDA, ONNX Runtime CUDA and TensorRT at batch 1
# (device compute and end to end, GPU memory, energy per image) and writes docs/gpu.md.
#
#   bash scripts/gpu_check.sh [CHECKPOINT] [EXPORT_DIR]
#
# CHECKPOINT: default the newest quickstart student (artifacts/runs/quickstart/*/checkpoints/best.pt).
# EXPORT_DIR: an existing export of it to reuse; default: exported now to artifacts/gpu_check/export.
# Data: ../shared/data/camvid when present (CamVid val), else the synthetic scenes.
# Env: PYTHON (default .venv/bin/python, else python3), RUNS (200), WARMUP (50), GPU_MD (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi is missing or sees no GPU); run it on a machine with one" >&2
  exit 1
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "gpu_check: installing the GPU extra (onnxruntime-gpu, tensorrt, nvidia-ml-py)"
if ! "$PY" -m pip install -q -e ".[gpu]" 2>/tmp/gpu_check_pip.log; then
  echo "gpu_check: could not install the GPU extra (offline?): going on with what is installed;"
  echo "           rows for missing backends will say so ($(tail -n 1 /tmp/gpu_check_pip.log))"
fi

CKPT=${1:-}
if [ -z "$CKPT" ]; then
  CKPT=$(ls -t artifacts/runs/quickstart/*/checkpoints/best.pt 2>/dev/null | head -n 1 || true)
  if [ -z "$CKPT" ]; then
    echo "gpu_check: no checkpoint given and no quickstart student found; run" >&2
    echo "           bash scripts/quickstart.sh first, or pass a checkpoint" >&2
    exit 1
  fi
fi
DATA_ARGS=()
CALIB_ARGS=()
if [ -d ../shared/data/camvid ]; then
  DATA_ARGS=(--data ../shared/data/camvid)
  CALIB_ARGS=(--calib-data ../shared/data/camvid)
fi

EXPORT=${2:-}
if [ -z "$EXPORT" ]; then
  EXPORT=artifacts/gpu_check/export
  TRT=()
  if "$PY" -c "import tensorrt" 2>/dev/null; then TRT=(--trt); fi
  # AOTInductor compiled for the GPU (needs a C++ compiler): its CUDA row beside eager
  if command -v g++ >/dev/null 2>&1; then TRT+=(--aoti --aoti-device cuda); fi
  OVERWRITE=()
  if [ -f "$EXPORT/manifest.json" ]; then OVERWRITE=(--overwrite); fi
  "$PY" -m segcompress.cli export "$CKPT" --out "$EXPORT" --int8 --target tensorrt \
      "${TRT[@]}" "${CALIB_ARGS[@]}" "${OVERWRITE[@]}"
fi

"$PY" -m bench.cli gpu-check "$CKPT" --export "$EXPORT" "${DATA_ARGS[@]}" \
    --runs "${RUNS:-200}" --warmup "${WARMUP:-50}" --out "${GPU_MD:-docs/gpu.md}" \
    --json artifacts/gpu_check/gpu_check.json
