"""``compress export`` through typer's CliRunner (and once as the installed command)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deploy.backends.tensorrt import missing_requirements
from deploy.errors import BackendUnavailable
from segcompress.cli import app

runner = CliRunner()


def test_export_argmax_writes_manifest_and_table(trained_ckpt, tmp_path):
    out = tmp_path / "exp"
    res = runner.invoke(app, ["export", str(trained_ckpt), "--out", str(out), "--onnx",
                              "--argmax", "--size", "64x64", "--static-batch", "--val-size", "4"])
    assert res.exit_code == 0, res.output
    assert "model.onnx" in res.output and "agreement" in res.output
    m = json.loads((out / "manifest.json").read_text())
    (art,) = m["artifacts"]
    assert art["output"] == "argmax" and art["output_name"] == "classes"
    assert art["input_shape"] == [1, 3, 64, 64]
    assert art["verification"]["agreement"] >= 0.999


def test_bad_size_is_refused(trained_ckpt, tmp_path):
    res = runner.invoke(app, ["export", str(trained_ckpt), "--out", str(tmp_path / "x"),
                              "--size", "60x64"])
    assert res.exit_code != 0
    assert "multiples of 32" in str(res.exception)
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not missing_requirements(), reason="TensorRT and a GPU are present here")
def test_trt_without_gpu_stops_at_once(trained_ckpt, tmp_path):
    out = tmp_path / "exp"
    res = runner.invoke(app, ["export", str(trained_ckpt), "--out", str(out), "--trt"])
    assert isinstance(res.exception, BackendUnavailable)
    msg = str(res.exception)
    assert "pip install 'segcompress[gpu]'" in msg and "\n" not in msg
    for reason in missing_requirements():
        assert reason in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not missing_requirements(), reason="TensorRT and a GPU are present here")
def test_trt_error_is_one_line_from_the_command(tmp_path):
    # the checkpoint need not exist: --trt is checked before anything is read
    cmd = [sys.executable, "-c", "from segcompress.cli import main; main()", "export",
           str(tmp_path / "missing.pt"), "--out", str(tmp_path / "exp"), "--trt"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --trt: TensorRT needs an NVIDIA GPU"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_of_an_export_goes_through_deploys_loader(trained_ckpt, tmp_path):
    """``compress eval`` scores an ``.onnx`` like its checkpoint: the command is compress's,
    the loader deploy's (handed over by segcompress.cli); compress's own app refuses it
    in one line, as it cannot import deploy."""
    from compress.cli import app as compress_only

    out = tmp_path / "exp"
    res = runner.invoke(app, ["export", str(trained_ckpt), "--out", str(out), "--size", "64x64",
                              "--val-size", "4"])
    assert res.exit_code == 0, res.output
    scores = {}
    for path in (trained_ckpt, out / "model.onnx"):
        res = runner.invoke(app, ["eval", str(path), "--kind", "synthetic", "--data", "x",
                                  "--out", str(tmp_path / path.suffix[1:])])
        assert res.exit_code == 0, res.output
        scores[path.suffix] = json.loads((tmp_path / path.suffix[1:] / "eval.json").read_text())
    assert abs(scores[".onnx"]["miou"] - scores[".pt"]["miou"]) < 1e-3
    res = runner.invoke(compress_only, ["eval", str(out / "model.onnx"), "--kind", "synthetic",
                                        "--data", "x"])
    assert res.exit_code != 0 and "not a checkpoint" in str(res.exception)


def test_export_options_are_defined_once():
    """The command's choices are the validating tables and its defaults ExportConfig's."""
    import inspect

    from deploy import cli
    from deploy.pipeline import INT8_METHODS, TARGETS, ExportConfig
    from deploy.quantize import CALIB_STATS, PRESETS

    assert [e.value for e in cli.Preset] == list(PRESETS)
    assert [e.value for e in cli.Target] == list(TARGETS)
    assert [e.value for e in cli.Int8Method] == list(INT8_METHODS)
    assert [e.value for e in cli.CalibStat] == list(CALIB_STATS)
    defaults = ExportConfig()
    params = inspect.signature(cli.export).parameters
    same = {"int8": "int8", "openvino": "openvino", "trt": "trt", "batch": "batch_size",
            "dynamic_batch": "dynamic_batch", "dynamic_spatial": "dynamic_spatial",
            "opset": "opset", "argmax": "argmax", "holdout_every": "holdout_every",
            "calib_split": "calib_split", "calib_size": "calib_size", "val_split": "val_split",
            "val_size": "val_size", "max_drop": "max_drop",
            "accuracy_control": "accuracy_control", "min_agreement": "min_agreement",
            "trt_max_batch": "trt_max_batch", "trt_workspace": "trt_workspace_gib",
            "overwrite": "overwrite", "target": "target", "int8_method": "int8_method",
            "calib_stat": "calib_stat"}
    for option, field in same.items():
        default = params[option].default
        assert getattr(default, "value", default) == getattr(defaults, field), option


@pytest.mark.parametrize("options, message", [
    ({"preset": "fast"}, "unknown preset 'fast'; valid: performance, mixed"),
    ({"target": "gpu"}, "unknown --target 'gpu'; valid: cpu, tensorrt"),
    ({"int8_method": "x"}, "unknown --int8-method 'x'; valid: nncf, modelopt"),
    ({"calib_stat": "x"}, "unknown --calib-stat 'x'; valid: default, minmax"),
    ({"int8": True, "calib_split": "val"}, "calibrate on the training split"),
    ({"int8": True, "int8_method": "modelopt"}, "add --target tensorrt"),
    ({"min_agreement": 0.0}, r"--min-agreement must be in \(0, 1\]"),
    ({"calib_images": "frames", "holdout_every": 1}, "--holdout-every must be >= 2"),
    ({"size": (60, 64)}, "60x64 must be multiples of 32"),
    ({"target": "tensorrt"}, "--target tensorrt chooses how the INT8 model is made.*add --int8"),
    ({"int8_method": "modelopt"}, "--int8-method modelopt .*add --int8"),
    ({"batch_size": 0}, "--batch must be an integer >= 1, got 0"),
    ({"trt_max_batch": 0}, "--trt-max-batch must be an integer >= 1, got 0"),
])
def test_one_function_validates_the_options(options, message):
    from compress.errors import InputError
    from deploy.pipeline import ExportConfig, validate_config

    with pytest.raises(InputError, match=message):
        validate_config(ExportConfig(**options))


def test_validation_gives_the_preset():
    from deploy.pipeline import ExportConfig, validate_config

    assert validate_config(ExportConfig()) == "mixed"
    assert validate_config(ExportConfig(int8=True, target="tensorrt")) == "performance"
    assert validate_config(ExportConfig(preset="performance")) == "performance"
