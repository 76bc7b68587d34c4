#!/usr/bin/env bash
# The README's CamVid front table from the runs of scripts/camvid_front.sh:
#  1. seed 0 of each student (and the teacher) packed into OUT/zoo (float16, `compress pack`),
#  2. each packed model scored on val at 192x256 and at the source size 360x480,
#  3. each packed student exported to INT8 (NNCF, 300 train frames) + OpenVINO,
#  4. `bench report`: the teacher, the students and their exports timed in one interleaved run,
#  5. the table (Markdown) from the runs' summary.json, the eval.json files and report.json,
#     written to OUT/front_table.md and printed, and its plot OUT/front_pareto.png.
# Steps whose output exists are skipped, so a rerun after a failure continues.
#
#   bash scripts/camvid_front_report.sh [student ...]   (default: the four students of the README)
#
# Env: PY (default .venv/bin/python), DATA (../shared/data/camvid), OUT (artifacts/front),
#      SEEDS ("0 1"), THREADS (2), RUNS (40), TEACHER (artifacts/camvid/front-teacher.pt).
# Nothing is copied into zoo/ unless ZOO is set: check OUT/front_table.md first, then rerun
# with ZOO=zoo/camvid to install OUT/zoo/*.pt there (the teacher as teacher-unet-lite2.pt)
# and rewrite its SHA256SUMS and scores.json (val mIoU at 192x256 from OUT/eval); the
# README's sha256 list and table are yours to update (tests/compress/test_zoo_camvid.py
# fails while the README lists other digests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-artifacts/front}
SEEDS=${SEEDS:-"0 1"}
THREADS=${THREADS:-2}
RUNS=${RUNS:-40}
TEACHER=${TEACHER:-artifacts/camvid/front-teacher.pt}
ZOO=${ZOO:-}
STUDENTS=${*:-"unet-lite0 ppliteseg-lite0 segformer-lite0-w64 lraspp-lite0"}
C=("$PY" -m segcompress.cli)
B=("$PY" -m bench.cli)
mkdir -p "$OUT/zoo" "$OUT/eval"

newest_run() {  # newest finished run dir of a run name (best.pt present, no FAILED file)
  local d
  for d in $(ls -d artifacts/runs/"$1"/*/ 2>/dev/null | sort -r); do
    if [ -f "$d/checkpoints/best.pt" ] && [ -f "$d/summary.json" ] && [ ! -f "$d/FAILED" ]; then
      echo "${d%/}"; return 0
    fi
  done
  echo "no finished run of $1 under artifacts/runs/$1" >&2; return 1
}

[ -f "$OUT/zoo/teacher.pt" ] || "${C[@]}" pack "$TEACHER" --out "$OUT/zoo/teacher.pt"
for s in $STUDENTS; do
  run=$(newest_run "camvid-front-$s-s0")
  [ -f "$OUT/zoo/$s.pt" ] || "${C[@]}" pack "$run/checkpoints/best.pt" --out "$OUT/zoo/$s.pt"
done
for m in teacher $STUDENTS; do
  for at in network source; do
    [ -f "$OUT/eval/$m-$at/eval.json" ] || "${C[@]}" eval "$OUT/zoo/$m.pt" --data "$DATA" \
        --split val --score-at "$at" --out "$OUT/eval/$m-$at" > /dev/null
  done
done
students=(); artifacts=()
for s in $STUDENTS; do
  [ -f "$OUT/export-$s/manifest.json" ] || "${C[@]}" export "$OUT/zoo/$s.pt" --out "$OUT/export-$s" \
      --int8 --openvino --calib-data "$DATA" --threads "$THREADS"
  students+=(--student "$OUT/zoo/$s.pt"); artifacts+=(--artifacts "$OUT/export-$s")
done
[ -f "$OUT/report/report.json" ] || "${B[@]}" report --teacher "$OUT/zoo/teacher.pt" \
    "${students[@]}" "${artifacts[@]}" --data "$DATA" --split val --threads "$THREADS" \
    --runs "$RUNS" --warmup 5 --device cpu --out "$OUT/report"
runs=()
for s in $STUDENTS; do
  for seed in $SEEDS; do
    runs+=("$s:$seed:$(newest_run "camvid-front-$s-s$seed" || echo -)")
  done
done
"$PY" scripts/front_table.py --out "$OUT" --plot "$OUT/front_pareto.png" "${runs[@]}" \
    | tee "$OUT/front_table.md"

if [ -n "$ZOO" ]; then  # install the packed models under their zoo names
  entries=()
  for m in teacher $STUDENTS; do
    name=$m.pt; packed="$OUT/zoo/$m.pt"
    if [ "$m" = teacher ]; then
      name=teacher-unet-lite2.pt
      # the zoo's own teacher, repacked, would change bytes (not weights): keep the file
      cmp -s "$TEACHER" "$ZOO/$name" && packed=-
    fi
    entries+=("$name=$packed:$OUT/eval/$m-network/eval.json")
  done
  "$PY" scripts/zoo_install.py "$ZOO" "${entries[@]}"
fi
