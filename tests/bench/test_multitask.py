"""Two-output (segmentation + depth) models in bench: ``bench latency`` times them like any
other model; ``bench report`` scores depth beside mIoU when the split carries depth, and
shows depth columns only then."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from compress.models import create_model, save_checkpoint
from tests.conftest import tiny_spec

DEPTH = {"name": "depth", "kind": "depth", "unit": "m", "min_depth": 0.5, "max_depth": 30.0,
         "channels": 8}
runner = CliRunner()


@pytest.fixture(scope="module")
def mt_student(tmp_path_factory):
    torch.manual_seed(0)
    spec = replace(tiny_spec(decoder_channels=[16, 16, 8, 8, 8], synthetic_names=True),
                   tasks=[dict(DEPTH)])
    root = tmp_path_factory.mktemp("bench_mt")
    return save_checkpoint(root / "mt.pt", create_model(spec), spec, epoch=0)


@pytest.fixture(scope="module")
def mt_export(mt_student, tmp_path_factory):
    from deploy.pipeline import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("bench_mt_export") / "mt"
    export_checkpoint(mt_student, out, ExportConfig(openvino=True, val_size=2,
                                                    synthetic_val_length=2, min_agreement=0.9))
    return out


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory):
    from compress.data.materialize import write_synthetic

    out = tmp_path_factory.mktemp("bench_depth") / "data"
    write_synthetic(out, length=2, size=(64, 64), seed=0, splits=("val",), depth="dense",
                    show=False)
    return out


def test_latency_times_a_two_output_model(tmp_path, mt_student, mt_export):
    out = tmp_path / "lat.json"
    result = runner.invoke(app, [
        "latency", str(mt_student), str(mt_export / "model.onnx"), str(mt_export / "model.xml"),
        "--runs", "2", "--warmup", "1", "--threads", "1", "--data-kind", "synthetic",
        "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["label"] for r in rows] == ["mt.pt", "model.onnx", "model.xml"]
    for r in rows:
        assert r["error"] is None and r["latency_ms"]["n"] == 2, r


def test_report_scores_depth_beside_miou(tmp_path, checkpoints, mt_student, mt_export,
                                         depth_folder):
    teacher, _ = checkpoints
    out = tmp_path / "rep"
    result = runner.invoke(app, [
        "report", "--teacher", str(teacher), "--student", str(mt_student),
        "--artifacts", str(mt_export), "--data", str(depth_folder), "--data-kind", "folder",
        "--split", "val", "--size", "64x64", "--runs", "2", "--warmup", "0", "--threads", "1",
        "--device", "cpu", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "report.json").read_text())
    by_model = {r["model"]: r for r in rep["rows"]}
    teacher_row = by_model["teacher PyTorch f32"]
    assert "depth_rmse" not in teacher_row  # a single-task row has no depth keys
    mt_rows = [by_model[k] for k in ("student PyTorch f32", "student ONNX f32",
                                     "student OpenVINO f32")]
    for r in mt_rows:
        assert r["status"] == "ok" and 0 <= r["miou"] <= 1
        assert r["depth_rmse"] > 0 and r["depth_abs_rel"] > 0 and 0 <= r["depth_delta1"] <= 1
        assert r["depth"]["depth"]["pixels"] == 2 * 64 * 64
    # the exported graph is the checkpoint's: the same depth figures
    assert mt_rows[1]["depth_rmse"] == pytest.approx(mt_rows[0]["depth_rmse"], rel=1e-3)
    md = (out / "report.md").read_text()
    assert "depth RMSE" in md and "depth δ1" in md
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert header[header.index("delta_miou") + 1:][:3] == ["depth_rmse", "depth_abs_rel",
                                                          "depth_delta1"]


def test_single_task_tables_have_no_depth_columns():
    from bench.report import CSV_COLUMNS, SUMMARY_COLUMNS, render_csv, summary_table

    row = {"model": "m", "backend": "torch", "device": "cpu", "precision": "f32",
           "params": 1e6, "gmacs": 1.0, "size_mb": 1.0, "miou": 0.5, "delta_miou": 0.0,
           "status": "ok", "reason": None, "latency_ms": None, "preprocess_ms": None,
           "postprocess_ms": None, "speedup_same_backend": None,
           "speedup_vs_teacher_torch": None, "notes": [], "per_class_iou": {},
           "per_class_delta": {}}
    report = {"rows": [row], "classes": []}
    assert summary_table(report)[0] == SUMMARY_COLUMNS
    assert render_csv(report).splitlines()[0].split(",") == CSV_COLUMNS
    depth_row = {**row, "depth_rmse": 1.5, "depth_abs_rel": 0.1, "depth_delta1": 0.9}
    table = summary_table({"rows": [row, depth_row], "classes": []})
    i = table[0].index("depth RMSE")
    assert table[0][i - 1] == "Δ mIoU" and table[1][i] == "—" and table[2][i] == "1.500"
