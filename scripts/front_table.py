"""The README's CamVid front table, from what scripts/camvid_front_report.sh wrote.

    python scripts/front_table.py --out artifacts/front NAME:SEED:RUN_DIR ...

Reads each run's ``summary.json`` (best val mIoU) and ``metrics.csv`` (its epoch), the
packed models' ``eval.json`` at the network and the source size (OUT/eval/<name>-<at>/),
and OUT/report/report.json (params, GMACs, ms/image, INT8 mIoU, all from one interleaved
run). Prints one Markdown table; a run given as ``-`` (none finished) shows as "-".
``--plot PATH`` also draws the front: the teacher and each student in PyTorch (mIoU: mean ±
std over the seeds) and in OpenVINO INT8 (seed 0's export), against ms/image from the report.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path


def _best_epoch(run: Path) -> int | None:
    """The epoch whose val mIoU is the run's best (what best.pt holds)."""
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_miou")]
    return int(max(rows, key=lambda r: float(r["val_miou"]))["epoch"]) if rows else None


def _seed_cell(runs: dict[int, Path | None]) -> tuple[str, str, list[float]]:
    """'65.60 / 65.58 (65.59 ± 0.01)', the best epochs and the finished seeds' mIoU (%),
    from the runs' summaries."""
    scores, epochs = [], []
    for seed in sorted(runs):
        run = runs[seed]
        if run is None:
            scores.append(None)
            epochs.append("-")
            continue
        summary = json.loads((run / "summary.json").read_text())
        scores.append(100 * summary["best_val_miou"])
        epochs.append(f"{_best_epoch(run)}/{summary['epochs']}")
    cells = " / ".join("-" if s is None else f"{s:.2f}" for s in scores)
    done = [s for s in scores if s is not None]
    if len(done) > 1:
        cells += f" ({statistics.mean(done):.2f} ± {statistics.stdev(done):.2f})"
    return cells, ", ".join(epochs), done


def plot_front(report: dict, seed_scores: dict[str, list[float]], path: Path) -> Path | None:
    """The README's Pareto plot: report rows of the teacher (PyTorch), each student in
    PyTorch with its mIoU replaced by the mean ± std of its seeds, and its OpenVINO INT8
    export (seed 0, as measured)."""
    from bench.report import plot_pareto

    rows = []
    for r in report["rows"]:
        name, how = r["name"], (r["backend"], r["precision"])
        if name == "teacher" and how == ("torch", "f32"):
            rows.append({**r, "model": "teacher PyTorch"})
        elif seed_scores.get(name) and how == ("torch", "f32"):
            done = seed_scores[name]
            rows.append({**r, "miou": statistics.mean(done) / 100,
                         "miou_std": statistics.stdev(done) / 100 if len(done) > 1 else None,
                         "model": f"{name} PyTorch ({len(done)} seeds)"})
        elif name in seed_scores and how == ("openvino", "int8"):
            rows.append({**r, "model": f"{name} OpenVINO INT8 (seed 0)"})
    return plot_pareto({"rows": rows}, path, title="CamVid val mIoU vs latency")


def _eval(out: Path, name: str, at: str) -> str:
    path = out / "eval" / f"{name}-{at}" / "eval.json"
    if not path.exists():
        return "-"
    return f"{100 * json.loads(path.read_text())['miou']:.2f}"


def _ms(row: dict | None) -> str:
    if not row or not row.get("latency_ms"):
        return "-"
    lat = row["latency_ms"]
    return f"{lat['median']:.2f} ± {lat['std']:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path, help="also draw the front into this PNG")
    p.add_argument("runs", nargs="+", help="NAME:SEED:RUN_DIR (RUN_DIR '-' when none finished)")
    args = p.parse_args(argv)

    runs: dict[str, dict[int, Path | None]] = {}
    for item in args.runs:
        name, seed, run = item.split(":", 2)
        runs.setdefault(name, {})[int(seed)] = None if run == "-" else Path(run)
    report = json.loads((args.out / "report" / "report.json").read_text())
    rows = {(r["name"], r["backend"], r["precision"]): r for r in report["rows"]}
    teacher = rows[("teacher", "torch", "f32")]
    t_ms = teacher["latency_ms"]["median"]

    def speed(row: dict | None) -> str:
        return f"{t_ms / row['latency_ms']['median']:.2f}x" if row and row.get("latency_ms") else "-"

    print("| model | val mIoU per seed (mean ± std) | best epoch / epochs | shipped (seed 0): val mIoU "
          "@192x256 / @360x480 | params | GMACs | PyTorch ms | x teacher | OpenVINO INT8: mIoU "
          "| INT8 ms | x teacher PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| teacher | | | {_eval(args.out, 'teacher', 'network')} / "
          f"{_eval(args.out, 'teacher', 'source')} | {teacher['params'] / 1e6:.2f} M | "
          f"{teacher['gmacs']:.2f} | {_ms(teacher)} | 1.00x | | | |")
    seed_scores = {}
    for name, seeds in runs.items():
        torch_row = rows.get((name, "torch", "f32"))
        int8 = rows.get((name, "openvino", "int8"))
        cells, epochs, seed_scores[name] = _seed_cell(seeds)
        params = f"{torch_row['params'] / 1e6:.2f} M" if torch_row else "-"
        gmacs = f"{torch_row['gmacs']:.2f}" if torch_row else "-"
        int8_miou = f"{100 * int8['miou']:.2f}" if int8 and int8.get("miou") is not None else "-"
        print(f"| `{name}` | {cells} | {epochs} | {_eval(args.out, name, 'network')} / "
              f"{_eval(args.out, name, 'source')} | {params} | {gmacs} | {_ms(torch_row)} | "
              f"{speed(torch_row)} | {int8_miou} | {_ms(int8)} | **{speed(int8)}** |")
    cpu = report.get("hardware", {}).get("cpu", {}).get("summary", "")
    print(f"\nLatency: batch 1, {report['settings']['runs']} runs after "
          f"{report['settings']['warmup']} warm-up, all models interleaved run by run; {cpu}")
    if args.plot:
        plot_front(report, seed_scores, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
