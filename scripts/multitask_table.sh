#!/usr/bin/env bash
# The multi-task workflow (seed 000 / S0) on the built-in synthetic data, end to end, then
# the table of docs/multitask.md: seg mIoU and depth RMSE of (a) a seg-only student,
# (b) a depth-only student, (c) a multi-task student without pseudo-labels, (d) with them,
# and the S0 student ((d) + response KD from the teacher). One run at a time, one thread
# each (train.threads=1 in the recipes); about 10 minutes on one CPU core.
#
#   bash scripts/multitask_table.sh [OUT]     (default OUT: artifacts/multitask)
#
# Extra arguments after OUT are dotted overrides for every student run (train.epochs=2).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/multitask}
shift || true
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
compress() { "$PY" -m segcompress.cli "$@"; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
R=configs/multitask
paths=(output_dir="$OUT/runs"
       "data.depth_val={kind: folder, root: $OUT/data/depth, split: val, depth: files, masks: false}")
depth_src="{kind: folder, root: $OUT/data/depth, split: train, depth: files, masks: false"
pseudo_src="{kind: folder, root: $OUT/data/pseudo, depth: files"

# (i) the depth source: LiDAR-like sparse depth, no segmentation labels (KITTI's role)
[ -d "$OUT/data/depth" ] || compress synthetic --out "$OUT/data/depth" --length 48 \
    --size 64x64 --seed 7 --depth lidar --no-masks -q
# (ii) the segmentation teacher
if [ ! -f "$OUT/teacher.pt" ]; then
    run=$(compress train -c $R/teacher.yaml -q output_dir="$OUT/runs" | sed -n 's/^run dir: //p')
    cp "$run/checkpoints/best.pt" "$OUT/teacher.pt"
fi
# (iii) its pseudo-labels on the depth source's frames (+ the depth maps linked beside them)
[ -d "$OUT/data/pseudo" ] || compress pseudo-label --teacher "$OUT/teacher.pt" \
    --images "$OUT/data/depth/images/train" --depth "$OUT/data/depth/depth/train" \
    --out "$OUT/data/pseudo" --threshold 0.7 -q

row() {  # row LABEL COMMAND RECIPE [overrides...]: train, then print the last epoch's metrics
    local label=$1 cmd=$2 recipe=$3
    shift 3
    local run
    run=$(compress "$cmd" -c "$R/$recipe" -q "${paths[@]}" "$@" | sed -n 's/^run dir: //p')
    "$PY" - "$label" "$run" <<'PY' >> "$OUT/table.txt"
import csv, sys
label, run = sys.argv[1], sys.argv[2]
last = list(csv.DictReader(open(f"{run}/metrics.csv")))[-1]
seg = "-" if "depth-only" in label else f"{float(last['val_miou']) * 100:.2f}"
rmse = last.get("val_depth_rmse")
print(f"| {label:<34} | {seg:>8} | {'-' if not rmse else f'{float(rmse):.3f}':>12} | {run} |")
PY
}

printf '| %-34s | %8s | %12s | %s |\n|%s|%s|%s|%s|\n' "student" "seg mIoU" "depth RMSE m" \
    "run" "------------------------------------" "---------:" "-------------:" "-----" \
    > "$OUT/table.txt"
row "(a) seg-only" train a_seg_only.yaml "$@"
row "(b) depth-only" train b_depth_only.yaml "data.extra_train=[$depth_src, weight: 1.0}]" "$@"
row "(c) multi-task, no pseudo-labels" train c_multitask.yaml \
    "data.extra_train=[$depth_src, weight: 1.0}]" "$@"
row "(d) multi-task + pseudo-labels" train d_multitask_pseudo.yaml \
    "data.extra_train=[$depth_src, weight: 0.5}, $pseudo_src, weight: 0.5}]" "$@"
row "S0: (d) + response KD (distill)" distill student.yaml teacher.checkpoint="$OUT/teacher.pt" \
    "data.extra_train=[$depth_src, weight: 0.5}, $pseudo_src, weight: 0.5}]" "$@"
cat "$OUT/table.txt"
