#!/usr/bin/env bash
# The README's two other speed levers on trained students ("Pruning and QAT on the trained
# students, measured"), each seed, from the first command to the table:
#  a. prune: the no-KD segformer-lite0-w64 of zoo/camvid pruned to PRUNE of its MACs
#     (`compress prune`, magnitude, 5 steps) into artifacts/pruned/segformer-base-p<PRUNE>.pt,
#     then fine-tuned under the teacher with DIST at its own 192x256
#     (configs/camvid/front/pruned_dist.yaml, 20 epochs), run camvid-pruned-dist-segformer-p<PRUNE>-s<seed>;
#  b. QAT: each seed's 128x192 DIST student of zoo/camvid-lowres distilled for 3 epochs through
#     NNCF's fake quantizers (configs/camvid/front/lowres_dist_qat.yaml), run
#     camvid-qat-dist-segformer-128x192-s<seed>.
# Runs are started, resumed (exact) or kept as scripts/runs_lib.sh says, JOBS at a time. Each
# finished run is packed into ZOO (float16, its val mIoU in scores.json, sha256 in
# SHA256SUMS), exported to OpenVINO INT8 (pruned: NNCF mixed PTQ, 300 train frames; QAT: from
# its trained quantizers), and the f32 file and INT8 model scored at 360x480 (`--score-at
# source`) beside the teacher and the unpruned no-KD student; one `compress delta` of every
# row against the teacher: OUT/levers.md (printed) and .json. Steps whose output exists are
# skipped, so a rerun continues.
#
#   bash scripts/camvid_levers.sh                 both levers, seeds 0 1 2
#   LEVERS=qat TRAIN=0 bash scripts/camvid_levers.sh   re-score the shipped QAT files only
#
# Env: PY, DATA, DEVICE, TEACHER, SEEDS ("0 1 2"), LEVERS ("prune qat"), PRUNE (0.6),
#      ZOO (zoo/camvid-levers), OUT (artifacts/levers), JOBS (8 on a GPU, 2 otherwise),
#      TRAIN (1), EXTRA (on a CPU: "train.threads=1 data.num_workers=1").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
DEVICE=${DEVICE:-auto}
TEACHER=${TEACHER:-zoo/camvid/teacher-unet-lite2.pt}
SEEDS=${SEEDS:-"0 1 2"}
LEVERS=${LEVERS:-"prune qat"}
PRUNE=${PRUNE:-0.6}
ZOO=${ZOO:-zoo/camvid-levers}
OUT=${OUT:-artifacts/levers}
TRAIN=${TRAIN:-1}
BASE=zoo/camvid/baseline-segformer-lite0-w64.pt  # the unpruned no-KD student (192x256)
# shellcheck source=scripts/runs_lib.sh
source scripts/runs_lib.sh
for l in $LEVERS; do
  case $l in prune|qat) ;; *) echo "unknown lever '$l'; known: prune qat" >&2; exit 2 ;; esac
done
mkdir -p "$OUT/logs" "$ZOO"
PRUNED=artifacts/pruned/segformer-base-p$PRUNE.pt
sfx() { [ "$1" = 0 ] || echo "-s$1"; }
run_name() {  # lever seed -> run name
  case $1 in
    prune) echo "camvid-pruned-dist-segformer-p$PRUNE-s$2" ;;
    qat) echo "camvid-qat-dist-segformer-128x192-s$2" ;;
  esac
}
zoo_file() {  # lever seed -> the zoo file
  case $1 in
    prune) echo "$ZOO/pruned$PRUNE-dist-segformer-lite0-w64-192x256$(sfx "$2").pt" ;;
    qat) echo "$ZOO/qat-dist-segformer-lite0-w64-128x192$(sfx "$2").pt" ;;
  esac
}
declare -A LABEL=([prune]="pruned to $PRUNE + DIST" [qat]="DIST 128x192 + QAT")

fail=0
if [ "$TRAIN" = 1 ]; then
  if [[ " $LEVERS " == *" prune "* ]] && [ ! -f "$PRUNED" ]; then
    mkdir -p "$(dirname "$PRUNED")"
    "${C[@]}" prune "$BASE" --out "$PRUNED" --macs-ratio "$PRUNE"
  fi
  pids=()
  for seed in $SEEDS; do for l in $LEVERS; do
    name=$(run_name "$l" "$seed")
    [ -f "$(zoo_file "$l" "$seed")" ] && { echo "$name: shipped as $(zoo_file "$l" "$seed")"; continue; }
    wait_for_slot
    if [ "$l" = prune ]; then
      run_named "$name" distill -c configs/camvid/front/pruned_dist.yaml seed="$seed" \
          model.init_from="$PRUNED" teacher.checkpoint="$TEACHER" data.root="$DATA" \
          train.device="$DEVICE" $EXTRA || fail=1
    else
      run_named "$name" distill -c configs/camvid/front/lowres_dist_qat.yaml seed="$seed" \
          model.init_from="zoo/camvid-lowres/dist-segformer-lite0-w64-128x192$(sfx "$seed").pt" \
          teacher.checkpoint="$TEACHER" data.root="$DATA" train.device="$DEVICE" $EXTRA || fail=1
    fi
    [ -z "$RUN_PID" ] || pids+=("$RUN_PID")
  done; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || fail=1; done
fi

src_eval "$TEACHER" "$OUT/src-teacher" || exit 1
groups=()
# the unpruned no-KD student of zoo/camvid (seed 0), the row the pruned one is set against
source_rows "no KD 192x256" "$BASE" || fail=1
for l in $LEVERS; do
  files=()
  for seed in $SEEDS; do
    f=$(zoo_file "$l" "$seed")
    pack_run "$(run_name "$l" "$seed")" "$f" || { [ $? = 2 ] || fail=1; continue; }
    files+=("$f")
  done
  [ ${#files[@]} -eq 0 ] || source_rows "${LABEL[$l]}" "${files[@]}" || fail=1
done
against_teacher "$OUT/levers" "pruning and QAT on the trained students, against the teacher, at 360x480"
exit $fail
