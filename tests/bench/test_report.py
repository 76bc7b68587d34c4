"""Report structure: columns, 'could not run' rows, INT8 remarks, collapsed classes; and a
CPU end-to-end report on tiny models with synthetic data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bench.latency import Target
from bench.report import (
    CSV_COLUMNS,
    SUMMARY_COLUMNS,
    _derive,
    _notes,
    _row,
    per_class_table,
    render_csv,
    render_markdown,
    summary_table,
    write_report,
)

CLASSES = ["road", "car", "pole"]
COST = {
    "teacher": {"params": 20_000_000, "gmacs": 10.0},
    "student": {"params": 2_000_000, "gmacs": 1.0},
}


def _lat(ms: float) -> dict:
    return {
        "n": 5,
        "median": ms,
        "mean": ms,
        "std": 0.1,
        "min": ms - 0.2,
        "p90": ms + 0.1,
        "max": ms + 0.3,
    }


def fake_report(tmp_path: Path) -> dict:
    def row(label, role, backend, prec, ms, iou, error=None, device="cpu"):
        f = tmp_path / f"{label.replace(' ', '_')}.bin"
        f.write_bytes(b"x" * 2**20)
        t = Target(
            label, f, backend, None, {"role": role, "artifact_precision": prec, "format": backend}
        )
        timing = (
            None
            if error
            else {"precision": prec, "latency_ms": _lat(ms), "memory": {"peak_rss_mb": 50.0}}
        )
        r = _row(t, device, COST, timing=timing, error=error)
        if iou is not None:
            r.miou = sum(iou) / len(iou)
            r.per_class_iou = dict(zip(CLASSES, iou))
        return r

    rows = [
        row("teacher PyTorch f32", "teacher", "torch", "f32", 40.0, [0.9, 0.8, 0.5]),
        row("student PyTorch f32", "student", "torch", "f32", 10.0, [0.88, 0.75, 0.45]),
        row("student ONNX f32", "student", "onnxruntime", "f32", 5.0, [0.88, 0.75, 0.45]),
        row("student ONNX int8", "student", "onnxruntime", "int8", 6.0, [0.87, 0.74, 0.10]),
        row(
            "student TensorRT fp16",
            "student",
            "tensorrt",
            "fp16",
            0,
            None,
            error="TensorRT: no GPU",
            device="cuda",
        ),
    ]
    _derive(rows, CLASSES)
    notes = _notes(rows)
    return {
        "settings": {
            "teacher": "t.pt",
            "student": "s.pt",
            "artifacts": "export",
            "data": "data",
            "split": "val",
            "data_kind": "camvid",
            "images_scored": 3,
            "size": [64, 64],
            "runs": 5,
            "warmup": 1,
            "threads": 1,
            "batch": 1,
            "devices": ["cpu", "cuda"],
            "input": "real images",
        },
        "hardware": {"cpu": {"summary": "CPU test"}},
        "cost": COST,
        "classes": CLASSES,
        "rows": [r.to_dict() for r in rows],
        "notes": notes,
    }


def test_summary_table_structure(tmp_path):
    rep = fake_report(tmp_path)
    table = summary_table(rep)
    assert table[0] == SUMMARY_COLUMNS
    assert len(table) == 1 + 5 and all(len(r) == len(SUMMARY_COLUMNS) for r in table)
    col = {name: i for i, name in enumerate(SUMMARY_COLUMNS)}
    student = table[2]
    assert student[col["params (M)"]] == "2.00" and student[col["GMACs"]] == "1.000"
    assert student[col["Δ mIoU"]] == "-4.00"  # (0.88+0.75+0.45)/3 - (0.9+0.8+0.5)/3
    assert student[col["× teacher same backend"]] == "4.00×"
    assert table[3][col["× teacher PyTorch"]] == "8.00×"
    assert table[3][col["× teacher same backend"]] == "—"  # no teacher ONNX row
    assert student[col["size (MB)"]] == "1.00"


def test_row_that_could_not_run_stays_and_says_why(tmp_path):
    rep = fake_report(tmp_path)
    trt = summary_table(rep)[-1]
    assert trt[0] == "student TensorRT fp16"
    assert "could not run: TensorRT: no GPU" in trt
    assert any("could not run (TensorRT: no GPU)" in n for n in rep["notes"])
    md = render_markdown(rep)
    assert "| student TensorRT fp16 |" in md and "could not run: TensorRT: no GPU" in md


def test_int8_not_faster_is_said(tmp_path):
    rep = fake_report(tmp_path)
    int8 = next(r for r in rep["rows"] if r["model"] == "student ONNX int8")
    assert any("INT8 is not faster than F32 on onnxruntime/cpu" in n for n in int8["notes"])
    assert any("INT8 is not faster" in n for n in rep["notes"])
    assert "INT8 is not faster" in render_markdown(rep)


def test_collapsed_class_is_visible(tmp_path):
    rep = fake_report(tmp_path)
    table = per_class_table(rep)
    assert table[0][:2] == ["class", "teacher IoU"]
    assert [r[0] for r in table[1:]] == CLASSES
    pole = table[3]
    assert pole[1] == "50.0"
    assert pole[table[0].index("Δ student ONNX int8")] == "**-40.0**"
    assert pole[table[0].index("Δ student PyTorch f32")] == "-5.0"
    int8 = next(r for r in rep["rows"] if r["model"] == "student ONNX int8")
    assert "pole IoU -40.0 pts vs teacher" in int8["notes"]


def test_csv_and_files(tmp_path):
    rep = fake_report(tmp_path)
    rows = list(csv.DictReader(io.StringIO(render_csv(rep))))
    assert len(rows) == 5
    assert list(rows[0])[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert "delta_iou_pole" in rows[0]
    assert rows[-1]["status"] == "could not run" and rows[-1]["reason"] == "TensorRT: no GPU"
    files = write_report(rep, tmp_path / "out")
    assert set(files) == {"pareto", "per_class", "markdown", "csv", "json"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in files.values())
    assert files["pareto"].read_bytes()[:4] == b"\x89PNG"
    back = json.loads(files["json"].read_text())
    assert back["rows"][-1]["reason"] == "TensorRT: no GPU"


def test_end_to_end_report_cli(tmp_path, checkpoints, export_dir):
    from typer.testing import CliRunner

    from bench.cli import app

    teacher, student = checkpoints
    out = tmp_path / "rep"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--teacher",
            str(teacher),
            "--student",
            str(student),
            "--artifacts",
            str(export_dir),
            "--data-kind",
            "synthetic",
            "--split",
            "val",
            "--size",
            "64x64",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--max-images",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "report.json").read_text())
    by_model = {r["model"]: r for r in rep["rows"]}
    assert list(by_model) == [
        "teacher PyTorch f32",
        "student PyTorch f32",
        "student ONNX f32",
        "student TensorRT fp16",
    ]
    t, s, onnx = (by_model[k] for k in list(by_model)[:3])
    for r in (t, s, onnx):
        assert r["status"] == "ok" and r["latency_ms"]["n"] == 3
        assert 0.0 <= r["miou"] <= 1.0 and set(r["per_class_iou"]) == set(rep["classes"])
        assert r["gmacs"] > 0 and r["size_mb"] > 0 and r["precision"] == "f32"
    assert t["delta_miou"] == 0.0 and t["speedup_vs_teacher_torch"] == pytest.approx(1.0)
    # the gap's paired interval over the 2 scored images, for every row but the teacher's
    assert t["delta_miou_ci"] is None and t["verdict"] is None
    for r in (s, onnx):
        low, high = r["delta_miou_ci"]
        assert low <= r["delta_miou"] <= high
        assert r["verdict"] in ("better", "worse", "within noise")
    assert onnx["delta_miou_ci"] == pytest.approx(s["delta_miou_ci"], abs=1e-3)
    assert s["params"] < t["params"]
    # the ONNX export is the student's graph: same predictions, so the same mIoU
    assert onnx["miou"] == pytest.approx(s["miou"], abs=1e-3)
    trt = by_model["student TensorRT fp16"]
    assert trt["status"] == "could not run" and trt["reason"].startswith("TensorRT")
    assert rep["settings"]["input"].startswith("real images")
    assert rep["hardware"]["cpu"]["threads"] == 1
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "could not run: TensorRT" in md and "pareto.png" in md
    lo, hi = (v * 100 for v in s["delta_miou_ci"])
    assert f"| [{lo:+.2f}, {hi:+.2f}] {s['verdict']} |" in md and "Δ 95% CI" in md
    assert (out / "pareto.png").is_file() and (out / "per_class.png").is_file()


def test_several_students_in_one_report(tmp_path, checkpoints, export_dir):
    """Two students (one with its export dir) timed in one run: rows labelled by file name,
    each with its own params/GMACs; an extra export dir is refused naming the counts."""
    import shutil

    from bench.report import build_report

    teacher, student = checkpoints
    other = tmp_path / "slim.pt"
    shutil.copy(student, other)
    common = {"teacher": teacher, "data": None, "kind": "synthetic", "size": (64, 64),
              "runs": 2, "warmup": 0, "threads": 1, "devices": ["cpu"], "max_images": 2}
    rep = build_report(student=[student, other], artifacts=[export_dir], **common)
    by_model = {r["model"]: r for r in rep["rows"]}
    assert list(by_model)[:4] == ["teacher PyTorch f32", "student PyTorch f32",
                                  "slim PyTorch f32", "student ONNX f32"]
    assert by_model["slim PyTorch f32"]["status"] == "ok"
    assert by_model["slim PyTorch f32"]["params"] == by_model["student PyTorch f32"]["params"]
    assert by_model["slim PyTorch f32"]["params"] < by_model["teacher PyTorch f32"]["params"]
    assert by_model["slim PyTorch f32"]["miou"] == pytest.approx(
        by_model["student PyTorch f32"]["miou"])
    with pytest.raises(ValueError, match="2 export dirs for 1 student"):
        build_report(student=[student], artifacts=[export_dir, export_dir], **common)
    with pytest.raises(ValueError, match="share a name"):
        build_report(student=[student, student], **common)
    with pytest.raises(ValueError, match="share a name"):  # the teacher's rows keep their key
        build_report(student=[student, teacher], **common)


def test_int8_note_compares_a_student_with_its_own_fp32(tmp_path):
    """With several students, 'INT8 is not faster' pairs each INT8 row with the FP32 row of
    the same student, never with another student's."""
    cost = {**COST, "a": COST["student"], "b": COST["student"]}

    def row(label, name, prec, ms):
        f = tmp_path / f"{label.replace(' ', '_')}.bin"
        f.write_bytes(b"x")
        info = {"role": "student", "artifact_precision": prec, "format": "onnxruntime",
                "cost_key": name}
        return _row(Target(label, f, "onnxruntime", None, info), "cpu", cost,
                    timing={"precision": prec, "latency_ms": _lat(ms)})

    rows = [row("a ONNX f32", "a", "f32", 20.0), row("a ONNX int8", "a", "int8", 10.0),
            row("b ONNX f32", "b", "f32", 5.0), row("b ONNX int8", "b", "int8", 6.0)]
    notes = _notes(rows)
    assert notes == [("b ONNX int8: INT8 is not faster than F32 on onnxruntime/cpu "
                      "(6.00 vs 5.00 ms/image)")]


def test_gap_interval_is_the_paired_bootstrap_of_the_rows_own_images(tmp_path):
    """Each scored row's gap to the teacher gets the paired interval of the per-image
    counts both were scored with: here every image of the teacher has IoU 1/2 and every
    image of the student 3/4 on one class, so every resample gives +25 points."""
    import numpy as np

    from compress.evidence import ImageCounts

    def counts(inter, union, name):
        return ImageCounts(("a", "b", "c"), np.array(inter).reshape(3, 1),
                           np.array(union).reshape(3, 1), ("road",), name)

    rep = fake_report(tmp_path)  # rows with no per-image counts: no interval, said as —
    assert all(r["delta_miou_ci"] is None for r in rep["rows"])
    assert summary_table(rep)[2][SUMMARY_COLUMNS.index("Δ 95% CI")] == "—"
    info = {"role": "teacher", "artifact_precision": "f32", "format": "torch"}
    f = tmp_path / "t.pt"
    f.write_bytes(b"x")
    teacher = _row(Target("teacher PyTorch f32", f, "torch", None, info), "cpu", COST,
                   timing={"precision": "f32", "latency_ms": _lat(9.0)})
    student = _row(Target("student PyTorch f32", f, "torch", None,
                          {**info, "role": "student", "cost_key": "student"}), "cpu", COST,
                   timing={"precision": "f32", "latency_ms": _lat(3.0)})
    teacher.per_image = counts([1, 2, 5], [2, 4, 10], "teacher")
    student.per_image = counts([3, 6, 30], [4, 8, 40], "student")
    teacher.miou, student.miou = teacher.per_image.miou(), student.per_image.miou()
    _derive([teacher, student], ["road"])
    assert student.delta_miou == pytest.approx(0.25)
    assert student.delta_miou_ci == [0.25, 0.25] and student.verdict == "better"
    assert teacher.delta_miou_ci is None and "per_image" not in student.to_dict()
    row = summary_table({"rows": [student.to_dict()]})[1]
    assert row[SUMMARY_COLUMNS.index("Δ 95% CI")] == "[+25.00, +25.00] better"
