#!/usr/bin/env bash
# The README's CamVid Pareto front: the front teacher (configs/camvid/front/teacher.yaml),
# then every student distilled with CWD (configs/camvid/front/student.yaml) for each seed.
# On a GPU the students train JOBS at a time; on 2 CPU cores this takes many hours (measured:
# two Lite0 students side by side, one thread each, 80-90 s per epoch each, so about an hour
# per pair for 40 epochs: JOBS=2 STUDENT_EXTRA="train.threads=1 data.num_workers=1").
# A run that was stopped continues exactly: compress distill --resume artifacts/runs/<name>/<stamp>
#
#   bash scripts/camvid_front.sh [student ...]     (default: the four students of the README)
#   RECIPE=baseline bash scripts/camvid_front.sh segformer-lite0-w64 ppliteseg-lite0
#       the no-KD baselines instead (configs/camvid/front/baseline.yaml, `compress train`,
#       runs named camvid-front-baseline-<student>-s<seed>): the KD gain's other side
#
# Env: PY (default .venv/bin/python), DATA (../shared/data/camvid), DEVICE (auto),
#      SEEDS ("0 1"), RECIPE (student: CWD from the teacher; baseline: no KD), JOBS (8 on a GPU, 1 otherwise), EXTRA / TEACHER_EXTRA / STUDENT_EXTRA
#      (more dotted overrides for both / the teacher / the students). Runs land in artifacts/runs/<name>/<stamp>/;
#      the teacher is copied to artifacts/camvid/front-teacher.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-"0 1"}
STUDENTS=${*:-"unet-lite0 ppliteseg-lite0 segformer-lite0-w64 lraspp-lite0"}
if [ -z "${JOBS:-}" ]; then
  JOBS=1; "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && JOBS=8
fi
C=("$PY" -m segcompress.cli)
RECIPE=${RECIPE:-student}
case "$RECIPE" in
  student) CMD=distill; PREFIX=camvid-front ;;
  baseline) CMD=train; PREFIX=camvid-front-baseline ;;
  *) echo "RECIPE must be student or baseline, not '$RECIPE'" >&2; exit 2 ;;
esac
TEACHER=artifacts/camvid/front-teacher.pt
if [ "$RECIPE" = student ] && [ ! -f "$TEACHER" ]; then
  "${C[@]}" train -q -c configs/camvid/front/teacher.yaml data.root="$DATA" train.device="$DEVICE" \
      ${EXTRA:-} ${TEACHER_EXTRA:-} | tee artifacts/front-teacher.out
  run=$(tail -n 1 artifacts/front-teacher.out | sed 's/^run dir: //')
  mkdir -p artifacts/camvid && cp "$run/checkpoints/best.pt" "$TEACHER"
fi
mkdir -p artifacts/front-logs
pids=()
fail=0
for seed in $SEEDS; do
  for s in $STUDENTS; do
    name="$PREFIX-$s-s$seed"
    # the newest run of this name: finished -> skip; failed -> say why, skip; stopped (killed,
    # Ctrl-C) with a last.pt -> resume it; none -> start it
    last=$(ls -d artifacts/runs/"$name"/*/ 2>/dev/null | sort | tail -n 1 || true)
    last=${last%/}
    if [ -n "$last" ] && [ -f "$last/FAILED" ] && ! grep -q "^error: KeyboardInterrupt" "$last/FAILED"; then
      echo "$name: $last $(grep -m 1 '^error:' "$last/FAILED"); not restarted" >&2; fail=1; continue
    fi
    if [ -n "$last" ] && [ -f "$last/summary.json" ]; then
      echo "$name: finished in $last"; continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
    log="artifacts/front-logs/$RECIPE-$s-s$seed.out"
    if [ -n "$last" ] && [ -f "$last/checkpoints/last.pt" ]; then
      echo "$name: resuming $last"
      "${C[@]}" "$CMD" -q --resume "$last" >> "$log" 2>&1 &
    elif [ "$RECIPE" = baseline ]; then
      "${C[@]}" train -q -c configs/camvid/front/baseline.yaml model.student="$s" seed="$seed" \
          name="$name" data.root="$DATA" train.device="$DEVICE" ${EXTRA:-} ${STUDENT_EXTRA:-} \
          > "$log" 2>&1 &
    else
      "${C[@]}" distill -q -c configs/camvid/front/student.yaml model.student="$s" seed="$seed" \
          name="$name" data.root="$DATA" train.device="$DEVICE" \
          teacher.checkpoint="$TEACHER" ${EXTRA:-} ${STUDENT_EXTRA:-} > "$log" 2>&1 &
    fi
    pids+=($!)
  done
done
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || fail=1; done
grep -h "^run dir" artifacts/front-logs/*.out || true
exit $fail
