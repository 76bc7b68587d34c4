#!/usr/bin/env bash
# Install the toolkit into .venv and run the main job: distil a student on the built-in
# synthetic dataset (the teacher is trained on the fly the first time). CPU, ~2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/compress distill --config configs/quickstart.yaml "$@"
