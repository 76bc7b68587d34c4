"""scripts/front_table.py: the README's CamVid front table from run summaries, eval.json
files and a report.json (hand-made here), so the table is what the files say."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def front_table():
    spec = importlib.util.spec_from_file_location("front_table", REPO / "scripts" / "front_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, best: float, vals: list[float]) -> Path:
    run = root / "runs" / name / "20260101-000000"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"best_val_miou": best, "epochs": len(vals)}))
    lines = ["epoch,train_loss,val_miou"] + [f"{i + 1},1.0,{v}" for i, v in enumerate(vals)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


def _row(name, backend, precision, ms, miou=0.5, params=3_000_000, gmacs=0.44):
    return {"name": name, "backend": backend, "precision": precision, "params": params,
            "gmacs": gmacs, "miou": miou, "latency_ms": {"median": ms, "std": ms / 10},
            "device": "cpu", "role": "teacher" if name == "teacher" else "student",
            "artifact_precision": precision, "model": f"{name} {backend} {precision}"}


def test_table_from_files(tmp_path, front_table, capsys):
    out = tmp_path / "front"
    (out / "report").mkdir(parents=True)
    rows = [_row("teacher", "torch", "f32", 60.0, 0.68, 6_700_000, 2.48),
            _row("seg", "torch", "f32", 20.0), _row("seg", "openvino", "int8", 5.0, 0.6512)]
    (out / "report" / "report.json").write_text(json.dumps({
        "settings": {"runs": 40, "warmup": 5, "threads": 2},
        "hardware": {"cpu": {"summary": "CPU test"}}, "rows": rows}))
    for m, at, v in [("seg", "network", 0.6561), ("seg", "source", 0.6576)]:
        (out / "eval" / f"{m}-{at}").mkdir(parents=True)
        (out / "eval" / f"{m}-{at}" / "eval.json").write_text(json.dumps({"miou": v}))
    r0 = _run(tmp_path, "s0", 0.6560, [0.5, "", 0.6560, 0.64])
    r1 = _run(tmp_path, "s1", 0.6540, [0.5, 0.6540, 0.60, 0.61])
    plot = tmp_path / "front.png"
    assert front_table.main(["--out", str(out), "--plot", str(plot), f"seg:0:{r0}", f"seg:1:{r1}",
                             "other:0:-"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    seg = next(line for line in text.splitlines() if line.startswith("| `seg`"))
    cells = [c.strip() for c in seg.strip("|").split("|")]
    assert cells[1] == "65.60 / 65.40 (65.50 ± 0.14)"  # seeds, mean ± sample std
    assert cells[2] == "3/4, 2/4"                        # the epoch best.pt holds, per seed
    assert cells[3] == "65.61 / 65.76"                   # the shipped model's eval.json files
    assert cells[7] == "3.00x" and cells[8] == "65.12" and cells[10] == "**12.00x**"
    other = next(line for line in text.splitlines() if line.startswith("| `other`"))
    assert "| - |" in other                              # no finished run: a dash, not a crash
    assert "CPU test" in text


def test_plot_points_are_seed_means_and_the_int8_export(front_table, monkeypatch, tmp_path):
    """The plot's PyTorch point of a student is the mean of its seeds with their std as the
    error bar; its INT8 point is the export's own mIoU; other backends are left out."""
    import bench.report

    drawn = {}
    monkeypatch.setattr(bench.report, "plot_pareto",
                        lambda report, path, title: drawn.update(rows=report["rows"]) or path)
    rows = [_row("teacher", "torch", "f32", 60.0, 0.68), _row("seg", "torch", "f32", 20.0, 0.66),
            _row("seg", "openvino", "int8", 5.0, 0.6512), _row("seg", "onnxruntime", "f32", 9.0),
            _row("skip", "torch", "f32", 9.0)]
    front_table.plot_front({"rows": rows}, {"seg": [65.6, 65.4], "skip": []}, tmp_path / "p.png")
    got = {r["model"]: r for r in drawn["rows"]}
    assert sorted(got) == ["seg OpenVINO INT8 (seed 0)", "seg PyTorch (2 seeds)", "teacher PyTorch"]
    assert got["seg PyTorch (2 seeds)"]["miou"] == pytest.approx(0.655)
    assert got["seg PyTorch (2 seeds)"]["miou_std"] == pytest.approx(0.0014142, abs=1e-6)
    assert got["seg OpenVINO INT8 (seed 0)"]["miou"] == 0.6512
    assert "miou_std" not in got["teacher PyTorch"]
