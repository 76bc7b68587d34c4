# Shared by the study scripts (scripts/camvid_lowres.sh, scripts/camvid_levers.sh): find a
# named run and start, resume or keep it. Source it after setting C (the CLI command array)
# and OUT; each function returns non-zero on a failure it reports.

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
