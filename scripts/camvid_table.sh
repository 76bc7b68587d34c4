#!/usr/bin/env bash
# Reproduce the README's CamVid tables (CPU, hours on 2 cores): the teacher, then each
# student recipe for the given seeds. Runs land in artifacts/runs/<name>/<stamp>/.
# Usage: bash scripts/camvid_table.sh [recipes...]   (default: baseline kd_response)
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/compress
SEEDS=${SEEDS:-"0 1"}
if [ ! -f artifacts/camvid/teacher.pt ]; then
  $C train -q -c configs/camvid/teacher.yaml | tee /tmp/camvid_teacher.out
  run=$(tail -n 1 /tmp/camvid_teacher.out | sed 's/^run dir: //')
  mkdir -p artifacts/camvid && cp "$run/checkpoints/best.pt" artifacts/camvid/teacher.pt
fi
RECIPES=${*:-"baseline kd_response"}
for seed in $SEEDS; do
  for r in $RECIPES; do
    cmd=distill; [ "$r" = baseline ] && cmd=train
    $C $cmd -q -c "configs/camvid/$r.yaml" seed="$seed" name="camvid-$r-s$seed"
  done
done
