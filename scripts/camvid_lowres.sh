#!/usr/bin/env bash
# The README's lower-resolution study ("The lower-resolution lever, measured"): each student
# trained and run at 128x192 (or SIZE) with each KD recipe of configs/camvid/front/lowres_*.yaml and
# without KD, one run per seed, then every run scored on the same val images and each recipe
# set against the no-KD runs with `compress delta` (Δ of the seed means, its paired bootstrap
# 95 % interval over the images, the verdict, the seed-paired differences).
#  1. train: for each student, recipe and seed, the run named
#     camvid-lowres-<recipe>-<student>-s<seed>: finished -> kept; stopped with a last.pt ->
#     resumed (exact); none -> started. JOBS at a time (one thread each on a CPU).
#  2. pack: ZOO/<prefix>-<student>-<SIZE>[-s<seed>].pt (float16; seed 0 has no suffix), from
#     the finished run where the file is not there yet (with its val mIoU in ZOO/scores.json
#     and its sha256 in ZOO/SHA256SUMS); a file already there is used as it is.
#  3. score: `compress eval FILE --split val` into OUT/eval-<prefix>-<student>-<SIZE>[-s<seed>].
#  4. compare: one `compress delta` of every recipe against the no-KD runs: the Markdown table
#     OUT/lowres-<student>.md (printed), its .json and the plot .png.
#  5. SOURCE=1 only: each file exported to OpenVINO INT8 (NNCF mixed, 300 train frames) into
#     OUT/export-<file>, the f32 file and its INT8 model scored at the source resolution
#     (360x480, `--score-at source`) into OUT/src-<file>-f32 / -int8 beside the teacher
#     (OUT/src-teacher), and one `compress delta` of every recipe's f32 and INT8 seeds against
#     the teacher: OUT/source-<student>.md (printed) and .json.
# Steps whose output exists are skipped, so a rerun after a failure (or a stop) continues.
#
#   bash scripts/camvid_lowres.sh [student ...]          (default: segformer-lite0-w64)
#   TRAIN=0 bash scripts/camvid_lowres.sh                 re-score the shipped files only
#   SIZE=160x224 RECIPES="baseline dist" bash scripts/camvid_lowres.sh   the same at another size
#   SIZE=192x256 ...                                      at the teacher's size (no KD seed 0: zoo/camvid's)
#   SOURCE=1 TRAIN=0 RECIPES="baseline dist" bash scripts/camvid_lowres.sh  + INT8, at 360x480, vs the teacher
#
# Env: SIZE (128x192: the student's input; files <prefix>-<student>-<SIZE>..., runs
#      camvid-lowres-<recipe>-<student>-<SIZE>-s<seed> at another size; scored at SIZE),
#      PY (.venv/bin/python), DATA (../shared/data/camvid), DEVICE (auto), SEEDS ("0 1 2"),
#      RECIPES ("baseline dist cwd dist_boundary relation": configs/camvid/front/lowres_<r>.yaml),
#      TEACHER (zoo/camvid/teacher-unet-lite2.pt), ZOO (zoo/camvid-lowres), OUT
#      (artifacts/lowres), JOBS (8 on a GPU, 2 otherwise), TRAIN (1), SOURCE (0), EXTRA (more dotted
#      overrides; on a CPU the default is "train.threads=1 data.num_workers=1").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/camvid}
DEVICE=${DEVICE:-auto}
SEEDS=${SEEDS:-"0 1 2"}
RECIPES=${RECIPES:-"baseline dist cwd dist_boundary relation"}
TEACHER=${TEACHER:-zoo/camvid/teacher-unet-lite2.pt}
ZOO=${ZOO:-zoo/camvid-lowres}
OUT=${OUT:-artifacts/lowres}
TRAIN=${TRAIN:-1}
SOURCE=${SOURCE:-0}
SIZE=${SIZE:-128x192}  # the student's input, HxW (the recipes' own: 128x192)
[[ "$SIZE" =~ ^[0-9]+x[0-9]+$ ]] || { echo "SIZE must be HxW (e.g. 160x224), not '$SIZE'" >&2; exit 2; }
H=${SIZE%x*}; W=${SIZE#*x}
[ "$SIZE" = 128x192 ] && TAG="" || TAG="-$SIZE"  # run names at the recipes' own size as before
STUDENTS=${*:-"segformer-lite0-w64"}
# shellcheck source=scripts/runs_lib.sh
source scripts/runs_lib.sh
# the file prefix of each recipe in the zoo (the names the README's table cites)
declare -A PREFIX=([baseline]=baseline [dist]=dist [cwd]=cwd [dist_boundary]=distb [relation]=rel)
declare -A LABEL=([dist]=DIST [cwd]=CWD [dist_boundary]="DIST + boundary"
                  [relation]=relation)  # names in the table and the plot
for r in $RECIPES; do
  [ -n "${PREFIX[$r]:-}" ] || { echo "unknown recipe '$r'; known: ${!PREFIX[*]}" >&2; exit 2; }
  [ -f "configs/camvid/front/lowres_$r.yaml" ] || { echo "no configs/camvid/front/lowres_$r.yaml" >&2; exit 2; }
done
[[ " $RECIPES " == *" baseline "* ]] || { echo "RECIPES must include baseline (the no-KD side)" >&2; exit 2; }
mkdir -p "$OUT/logs" "$ZOO"

zoo_file() {  # student recipe seed -> the zoo file's path
  local sfx=""; [ "$3" = 0 ] || sfx="-s$3"
  # at the teacher's 192x256, seed 0 without KD is zoo/camvid's baseline (front/baseline.yaml:
  # the recipe of lowres_baseline.yaml at that size), not trained twice
  if [ "$SIZE" = 192x256 ] && [ "$2" = baseline ] && [ "$3" = 0 ] && [ -f "zoo/camvid/baseline-$1.pt" ]; then
    echo "zoo/camvid/baseline-$1.pt"; return
  fi
  echo "$ZOO/${PREFIX[$2]}-$1-$SIZE$sfx.pt"
}

fail=0
if [ "$TRAIN" = 1 ]; then
  pids=()
  for seed in $SEEDS; do for s in $STUDENTS; do for r in $RECIPES; do
    name="camvid-lowres-$r-$s$TAG-s$seed"
    [ -f "$(zoo_file "$s" "$r" "$seed")" ] && { echo "$name: shipped as $(zoo_file "$s" "$r" "$seed")"; continue; }
    wait_for_slot
    if [ "$r" = baseline ]; then
      run_named "$name" train -c configs/camvid/front/lowres_baseline.yaml model.student="$s" \
          seed="$seed" data.root="$DATA" data.size="[$H,$W]" train.device="$DEVICE" $EXTRA || fail=1
    else
      run_named "$name" distill -c "configs/camvid/front/lowres_$r.yaml" model.student="$s" \
          seed="$seed" data.root="$DATA" data.size="[$H,$W]" train.device="$DEVICE" \
          teacher.checkpoint="$TEACHER" $EXTRA || fail=1
    fi
    [ -z "$RUN_PID" ] || pids+=("$RUN_PID")
  done; done; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || fail=1; done
fi

for s in $STUDENTS; do
  # pack and score every run there is (a new file: packed under OUT/packed, scored, then
  # put into ZOO with its score and digest by scripts/zoo_install.py); a recipe is compared
  # when all its seeds are scored
  for r in $RECIPES; do for seed in $SEEDS; do
    f=$(zoo_file "$s" "$r" "$seed"); e="$OUT/eval-$(basename "$f" .pt)"
    pack_run "camvid-lowres-$r-$s$TAG-s$seed" "$f" || { [ $? = 2 ] || fail=1; continue; }
    [ -f "$e/per_image.npz" ] || "${C[@]}" eval "$f" --data "$DATA" --split val --out "$e" \
        --device "$DEVICE" > "$e.log" 2>&1 || { echo "eval $f failed: $e.log" >&2; fail=1; }
  done; done
  # every recipe whose seeds are all scored, against the no-KD runs: table, JSON, plot
  base=(); for seed in $SEEDS; do base+=(--baseline "$OUT/eval-$(basename "$(zoo_file "$s" baseline "$seed")" .pt)"); done
  groups=()
  for r in $RECIPES; do
    [ "$r" = baseline ] && continue
    runs=(); for seed in $SEEDS; do runs+=("$OUT/eval-$(basename "$(zoo_file "$s" "$r" "$seed")" .pt)"); done
    missing=0; for d in "${base[@]}" "${runs[@]}"; do [ "$d" = --baseline ] || [ -f "$d/per_image.npz" ] || missing=1; done
    if [ "$missing" = 1 ]; then echo "$s $r: not every seed is scored yet; no row" >&2; continue; fi
    groups+=(--recipe "${LABEL[$r]}=$(IFS=,; echo "${runs[*]}")")
  done
  if [ ${#groups[@]} -gt 0 ]; then
    "${C[@]}" delta "${groups[@]}" "${base[@]}" --baseline-name "no KD" --md "$OUT/lowres-$s$TAG.md" \
        --json "$OUT/lowres-$s$TAG.json" --plot "$OUT/lowres-$s$TAG.png" \
        --title "$s at $SIZE: KD recipes vs no KD, seeds $(echo $SEEDS | tr ' ' /)" > /dev/null
    cat "$OUT/lowres-$s$TAG.md"
  fi
done

[ "$SOURCE" = 1 ] || exit $fail
# 5. INT8 and the source resolution, against the teacher
src_eval "$TEACHER" "$OUT/src-teacher" || exit 1
for s in $STUDENTS; do
  groups=()
  for r in $RECIPES; do
    files=(); for seed in $SEEDS; do f=$(zoo_file "$s" "$r" "$seed"); [ -f "$f" ] && files+=("$f"); done
    [ ${#files[@]} -eq 0 ] || source_rows "${LABEL[$r]:-no KD}" "${files[@]}" || fail=1
  done
  [ ${#groups[@]} -eq 0 ] || against_teacher "$OUT/source-$s$TAG" "$s at $SIZE against the teacher, at 360x480"
done
exit $fail
