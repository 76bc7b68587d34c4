"""``bench flops`` / ``bench latency`` through typer's CliRunner; one-line user errors."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from bench.cli import app, main

runner = CliRunner()


def test_flops_cli(tmp_path, checkpoints):
    out = tmp_path / "flops.json"
    result = runner.invoke(
        app, ["flops", str(checkpoints[1]), "--size", "64x64", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "GMACs" in result.output and "stride 32" in result.output
    assert "uncounted  none" in result.output
    data = json.loads(out.read_text())
    assert data["size"] == [64, 64] and data["params"]["total"] > 0
    assert data["gmacs"] >= data["dense_gmacs"] > 0
    assert data["size_on_disk"][str(checkpoints[1])] > 0


def test_flops_of_export_dir_sizes_every_artifact(export_dir):
    result = runner.invoke(app, ["flops", str(export_dir)])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in result.output and "model_fp16.engine" in result.output


def test_latency_cli_interleaved_with_ratio(tmp_path, checkpoints, export_dir):
    out = tmp_path / "lat.json"
    teacher, student = checkpoints
    result = runner.invoke(
        app,
        [
            "latency",
            str(teacher),
            str(student),
            str(export_dir / "model.onnx"),
            str(export_dir / "model_fp16.engine"),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--data-kind",
            "synthetic",
            "--batch",
            "1",
            "--batch",
            "2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["threads"] == 1 and data["settings"]["input"].startswith("real images")
    assert data["hardware"]["cpu"] and "summary" in data["hardware"]
    rows = data["results"]
    assert [(r["label"], r["batch"]) for r in rows] == [
        (n, b)
        for b in (1, 2)
        for n in ("teacher.pt", "student.pt", "model.onnx", "model_fp16.engine")
    ]
    for r in rows[:3]:
        assert r["error"] is None and r["latency_ms"]["n"] == 3
        assert {"median", "std", "min", "p90", "max"} <= set(r["latency_ms"])
        assert r["preprocess_ms"]["median"] >= 0 and r["postprocess_ms"]["median"] >= 0
        assert r["precision"] == "f32" and r["memory"]["peak_rss_mb"] >= 0
    assert rows[0]["ratio_to_first"] == pytest.approx(1.0)
    assert rows[3]["error"].startswith("TensorRT")
    assert "could not run: TensorRT" in result.output
    assert "ratio" in result.output


def test_latency_noise_inputs_are_announced(checkpoints):
    result = runner.invoke(
        app,
        [
            "latency",
            str(checkpoints[1]),
            "--runs",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--size",
            "64x64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "random-noise images" in result.output


def _run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr()


def test_cuda_without_gpu_prints_one_line(monkeypatch, capsys, checkpoints):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, out = _run_main(monkeypatch, capsys, "latency", str(checkpoints[1]), "--device", "cuda")
    assert code == 1
    assert out.err.strip().count("\n") == 0
    assert out.err.startswith("error: --device cuda: no CUDA GPU")


def test_missing_file_prints_one_line(monkeypatch, capsys, tmp_path):
    code, out = _run_main(monkeypatch, capsys, "flops", str(tmp_path / "nope.pt"))
    assert code == 1 and out.err.strip() == f"error: not found: {tmp_path / 'nope.pt'}"


def test_report_needs_data_unless_synthetic(monkeypatch, capsys, checkpoints):
    code, out = _run_main(
        monkeypatch,
        capsys,
        "report",
        "--teacher",
        str(checkpoints[0]),
        "--student",
        str(checkpoints[1]),
    )
    assert code == 2 and "--data is required" in out.err
