# Shared by the study scripts (scripts/camvid_lowres.sh, scripts/camvid_levers.sh): the CLI
# command C, JOBS and EXTRA defaults by device, and functions that start, resume or keep a
# named run, pack it into a zoo, export and score files against the teacher. Source it after
# setting PY, DATA, DEVICE and OUT; each function returns non-zero on a failure it reports.

C=("$PY" -m segcompress.cli)
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  JOBS=${JOBS:-8}; EXTRA=${EXTRA:-}
else
  JOBS=${JOBS:-2}; EXTRA=${EXTRA:-"train.threads=1 data.num_workers=1"}
fi

newest_run() {  # the newest run dir of a run name, or nothing
  local last
  last=$(ls -d artifacts/runs/"$1"/*/ 2>/dev/null | sort | tail -n 1 || true)
  echo "${last%/}"
}

# run_named NAME CMD ARGS...: the run NAME of `compress CMD ARGS... name=NAME` in the
# background: finished (summary.json) -> kept; stopped with a last.pt (or interrupted) ->
# resumed exactly with `CMD --resume`; failed otherwise -> reported, not restarted; none ->
# started. The caller waits (the pid is in RUN_PID, empty when nothing was started).
run_named() {
  local name=$1 cmd=$2; shift 2
  local last log="$OUT/logs/$name.out"
  RUN_PID=""
  last=$(newest_run "$name")
  if [ -n "$last" ] && [ -f "$last/summary.json" ]; then echo "$name: finished in $last"; return 0; fi
  if [ -n "$last" ] && [ -f "$last/FAILED" ] && ! grep -q "^error: KeyboardInterrupt" "$last/FAILED"; then
    echo "$name: $last $(grep -m 1 '^error:' "$last/FAILED"); not restarted" >&2; return 1
  fi
  mkdir -p "$OUT/logs"
  if [ -n "$last" ] && [ -f "$last/checkpoints/last.pt" ]; then
    echo "$name: resuming $last"
    "${C[@]}" "$cmd" -q --resume "$last" >> "$log" 2>&1 &
  else
    echo "$name: starting"
    "${C[@]}" "$cmd" -q "$@" name="$name" > "$log" 2>&1 &
  fi
  RUN_PID=$!
}

wait_for_slot() {  # block while JOBS background jobs run
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
}

# src_eval MODEL OUT: MODEL (checkpoint or exported file) scored on val at the source
# resolution (360x480, `--score-at source`) into OUT, unless OUT holds its scores already.
src_eval() {
  [ -f "$2/per_image.npz" ] || "${C[@]}" eval "$1" --data "$DATA" --split val --score-at source \
      --out "$2" --device "$DEVICE" > "$2.log" 2>&1 || { echo "eval $1 at source failed: $2.log" >&2; return 1; }
}

# export_int8 CKPT OUT: the OpenVINO INT8 export (NNCF mixed, 300 train frames; a QAT
# checkpoint from its own quantizers) into OUT, unless OUT/model_int8.xml is there; one
# thread on a CPU.
export_int8() {
  local threads=(--threads 1); [ "$DEVICE" = cuda ] && threads=()
  [ -f "$2/model_int8.xml" ] || "${C[@]}" export "$1" --out "$2" --int8 --openvino \
      ${threads[@]+"${threads[@]}"} --calib-data "$DATA" > "$2.log" 2>&1 \
      || { echo "export $1 failed: $2.log" >&2; return 1; }
}

# pack_run NAME FILE: the finished run NAME's best.pt packed (float16) into OUT/packed, scored
# on val into OUT/eval-<file>, and put into FILE's folder with its score and digest
# (scripts/zoo_install.py), unless FILE is there. Returns 2 when the run is not finished
# (nothing to pack yet), 1 when a step failed.
pack_run() {
  local f=$2 name last e
  [ -f "$f" ] && return 0
  name=$(basename "$f"); e="$OUT/eval-${name%.pt}"
  last=$(newest_run "$1")
  [ -n "$last" ] && [ -f "$last/summary.json" ] || return 2
  mkdir -p "$OUT/packed"
  [ -f "$OUT/packed/$name" ] || "${C[@]}" pack "$last/checkpoints/best.pt" --out "$OUT/packed/$name" || return 1
  "${C[@]}" eval "$OUT/packed/$name" --data "$DATA" --split val --out "$e" --device "$DEVICE" \
      > "$e.log" 2>&1 || { echo "eval $name failed: $e.log" >&2; return 1; }
  "$PY" scripts/zoo_install.py "$(dirname "$f")" "$name=$OUT/packed/$name:$e/eval.json" > /dev/null
  echo "$name: packed from $last, scored, put into $(dirname "$f")"
}

# source_rows LABEL FILE...: each FILE exported to INT8 (OUT/export-<file>) and both scored at
# 360x480 (OUT/src-<file>-f32 / -int8); appends the recipes "LABEL f32" and "LABEL INT8" to the
# caller's groups array. Returns 1 when a step failed (the other files go on).
source_rows() {
  local label=$1 f name x rc=0; shift
  local f32=() int8=()
  for f in "$@"; do
    name=$(basename "$f" .pt); x="$OUT/export-$name"
    export_int8 "$f" "$x" || { rc=1; continue; }
    src_eval "$f" "$OUT/src-$name-f32" && f32+=("$OUT/src-$name-f32") || rc=1
    src_eval "$x/model_int8.xml" "$OUT/src-$name-int8" && int8+=("$OUT/src-$name-int8") || rc=1
  done
  [ ${#f32[@]} -eq 0 ] || groups+=(--recipe "$label f32=$(IFS=,; echo "${f32[*]}")")
  [ ${#int8[@]} -eq 0 ] || groups+=(--recipe "$label INT8=$(IFS=,; echo "${int8[*]}")")
  return $rc
}

# against_teacher STEM TITLE: one `compress delta` of the caller's groups against the teacher's
# 360x480 scores (OUT/src-teacher): STEM.md (printed) and STEM.json.
against_teacher() {
  "${C[@]}" delta "${groups[@]}" --baseline "$OUT/src-teacher" --baseline-name teacher \
      --md "$1.md" --json "$1.json" --title "$2" > /dev/null
  cat "$1.md"
}
