"""The README's runtimes table (docs/deploy.md "Every runtime, frame to map") from `bench
report` runs of the same models at different thread counts, and the manifests of the
exports they timed.

    python scripts/runtimes_table.py artifacts/report/runtimes-1t/report.json \
        artifacts/report/runtimes-2t/report.json

Per row: backend and what ran, mIoU (the report's, at the report size; a frame-to-map
graph's: its export's, at the frame size), pixel agreement with its reference (the
export's verification), and for each report: model ms, frame-to-map ms (median ± std)
and the frame-to-map speed-up over the teacher's PyTorch pipeline in the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _manifest_entry(path: str) -> dict:
    manifest = Path(path).parent / "manifest.json"
    if not manifest.is_file():
        return {}
    for art in json.loads(manifest.read_text())["artifacts"]:
        if art["file"] == Path(path).name:
            return art
    return {}


def _ms(stats: dict | None) -> str:
    return f"{stats['median']:.2f} ± {stats['std']:.2f}" if stats else "—"


def main(paths: list[str]) -> None:
    reports = [json.loads(Path(p).read_text()) for p in paths]
    threads = [r["settings"]["threads"] for r in reports]
    head = ["model", "ran as", "mIoU", "agreement %"]
    for t in threads:
        head += [f"model ms ({t}t)", f"frame→map ms ({t}t)", f"frame→map × teacher ({t}t)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model = [{r["model"]: r for r in rep["rows"]} for rep in reports]
    for row in reports[0]["rows"]:
        entry = _manifest_entry(row["path"])
        verified = entry.get("verification") or {}
        miou = row.get("miou")
        if miou is None and entry.get("frame_size"):
            miou = verified.get("miou")
        agreement = verified.get("agreement")
        cells = [row["model"], f"{row['backend']} {row['precision'] or ''}".strip(),
                 "—" if miou is None else f"{miou * 100:.2f}",
                 "—" if agreement is None else f"{agreement * 100:.2f}"]
        for rows in by_model:
            r = rows.get(row["model"], {})
            if r.get("status") != "ok":
                cells += [f"could not run: {r.get('reason')}", "", ""]
                continue
            speed = r.get("speedup_frame_to_map")
            cells += [_ms(r.get("latency_ms")), _ms(r.get("end_to_end_ms")),
                      "—" if speed is None else f"{speed:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    for rep in reports:
        s = rep["settings"]
        print(f"\n- {s['threads']} thread(s): {rep['hardware']['cpu']['summary']}; "
              f"{s['warmup']} warm-up + {s['runs']} runs interleaved; {s['input']}")


if __name__ == "__main__":
    main(sys.argv[1:])
