#!/usr/bin/env bash
# The KD gain of the front students, re-checkable: each student's no-KD baseline (same
# student, data, task loss and 40-epoch schedule; `RECIPE=baseline bash scripts/camvid_front.sh`)
# against its CWD student of the same seed, both scored on the same val images:
#  1. seed 0 of each baseline run packed into OUT/zoo/baseline-<student>.pt (float16),
#  2. `compress eval KD --compare BASELINE` at 192x256: OUT/gain-<student>/eval.json holds
#     Δ mIoU (KD - baseline) with its paired bootstrap 95% interval and verdict,
#  3. one Markdown line per student: both runs' val mIoU per seed (their summary.json) and
#     the shipped pair's Δ [95% CI] verdict, written to OUT/kd_gain.md and printed.
# Steps whose output exists are skipped, so a rerun after a failure continues.
#
#   bash scripts/camvid_kd_gain.sh [student ...]   (default: segformer-lite0-w64 ppliteseg-lite0)
#
# Env: PY (.venv/bin/python), DATA (../shared/data/camvid), OUT (artifacts/kd-gain),
#      SEEDS ("0 1"), KD_ZOO (zoo/camvid: where <student>.pt, the CWD student, is).
# ZOO=zoo/camvid also installs baseline-<student>.pt there (scores.json, SHA256SUMS).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
OUT=${OUT:-artifacts/kd-gain}
SEEDS=${SEEDS:-"0 1"}
KD_ZOO=${KD_ZOO:-zoo/camvid}
ZOO=${ZOO:-}
STUDENTS=${*:-"segformer-lite0-w64 ppliteseg-lite0"}
C=("$PY" -m segcompress.cli)
mkdir -p "$OUT/zoo"

finished_run() {  # newest finished run dir of a run name, or nothing
  local d
  for d in $(ls -d artifacts/runs/"$1"/*/ 2>/dev/null | sort -r); do
    [ -f "$d/summary.json" ] && [ ! -f "$d/FAILED" ] && { echo "${d%/}"; return 0; }
  done
  return 0
}
seed_miou() {  # best val mIoU (%) of a finished run, or -
  [ -n "$1" ] || { echo -; return; }
  "$PY" -c "import json,sys; print(f\"{100*json.load(open(sys.argv[1]))['best_val_miou']:.2f}\")" "$1/summary.json"
}

: > "$OUT/kd_gain.md.tmp"
echo "| student | no KD: val mIoU per seed | CWD: val mIoU per seed | shipped seed 0: Δ mIoU (CWD - no KD) [95% CI], verdict |" >> "$OUT/kd_gain.md.tmp"
echo "|---|---|---|---|" >> "$OUT/kd_gain.md.tmp"
entries=()
for s in $STUDENTS; do
  base0=$(finished_run "camvid-front-baseline-$s-s0")
  [ -n "$base0" ] || { echo "no finished run camvid-front-baseline-$s-s0 under artifacts/runs" >&2; exit 1; }
  [ -f "$OUT/zoo/baseline-$s.pt" ] || "${C[@]}" pack "$base0/checkpoints/best.pt" --out "$OUT/zoo/baseline-$s.pt"
  [ -f "$OUT/gain-$s/eval.json" ] || "${C[@]}" eval "$KD_ZOO/$s.pt" --data "$DATA" --split val \
      --compare "$OUT/zoo/baseline-$s.pt" --out "$OUT/gain-$s" > /dev/null
  base_cells=(); kd_cells=()
  for seed in $SEEDS; do
    base_cells+=("$(seed_miou "$(finished_run "camvid-front-baseline-$s-s$seed")")")
    kd_cells+=("$(seed_miou "$(finished_run "camvid-front-$s-s$seed")")")
  done
  gain=$("$PY" -c "
import json, sys
c = json.load(open(sys.argv[1]))['comparison']
lo, hi = c['delta_ci']
print(f\"{c['delta_pts']:+.2f} [{lo:+.2f}, {hi:+.2f}], {c['verdict']}\")" "$OUT/gain-$s/eval.json")
  (IFS=/; echo "| \`$s\` | ${base_cells[*]} | ${kd_cells[*]} | $gain |") >> "$OUT/kd_gain.md.tmp"
  entries+=("baseline-$s.pt=$OUT/zoo/baseline-$s.pt:$OUT/gain-$s/reference/eval.json")
done
mv "$OUT/kd_gain.md.tmp" "$OUT/kd_gain.md"
cat "$OUT/kd_gain.md"
[ -z "$ZOO" ] || "$PY" scripts/zoo_install.py "$ZOO" "${entries[@]}"
