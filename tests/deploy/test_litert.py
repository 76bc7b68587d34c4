"""LiteRT (issue 24): ``compress export --litert`` converts the student with litert-torch
(in its own environment: ``scripts/setup_litert.sh``) into a ``.tflite`` verified like
every artifact and run by the LiteRT interpreter; what it cannot do is refused in one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.backends import litert
from deploy.errors import BackendUnavailable, ManifestError
from deploy.runtime import backend_for_path, load_runtime
from tests.deploy.conftest import run_export

runner = CliRunner()
needs_litert = pytest.mark.skipif(
    litert.build_unavailable() is not None,
    reason=f"no LiteRT here: {litert.build_unavailable()}")


def test_tflite_is_the_litert_backend_and_needs_its_manifest(tmp_path):
    assert backend_for_path(tmp_path / "model.tflite").name == "litert"
    stray = tmp_path / "model.tflite"
    stray.write_bytes(b"not a model")
    with pytest.raises(ManifestError, match="a .tflite carries no segcompress spec") as e:
        load_runtime(stray)
    assert "\n" not in str(e.value)


def test_without_a_converter_environment_the_export_is_refused_before_any_work(
        trained_ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv(litert.PYTHON_ENV, raising=False)
    monkeypatch.setattr(litert, "DEFAULT_VENV", tmp_path / "no-venv")
    res = run_export(trained_ckpt, tmp_path / "exp", "--litert")
    assert isinstance(res.exception, BackendUnavailable) and "\n" not in str(res.exception)
    message = str(res.exception)
    if importlib.util.find_spec("ai_edge_litert") is None:
        assert "the interpreter is not installed (pip install 'segcompress[litert]')" in message
    else:
        assert "no converter environment" in message and "setup_litert.sh" in message
    monkeypatch.setenv(litert.PYTHON_ENV, str(tmp_path / "missing" / "python"))
    if importlib.util.find_spec("ai_edge_litert") is not None:
        assert litert.build_unavailable() == (f"LiteRT: {litert.PYTHON_ENV}="
                                              f"{tmp_path / 'missing' / 'python'}: no such "
                                              "interpreter")
    assert not (tmp_path / "exp").exists()


def test_litert_runs_on_the_cpu_only():
    assert litert.available("cuda") == "LiteRT: runs on the CPU here (XNNPACK), not cuda"


@needs_litert
@pytest.mark.slow  # a litert-torch conversion in its own process: about a minute on 2 cores
def test_export_litert_verifies_the_tflite_and_bench_times_it(trained_ckpt, tmp_path):
    from bench.cli import app as bench_app

    out = tmp_path / "exp"
    res = run_export(trained_ckpt, out, "--litert", "--int8", "--calib-size", "4",
                     "--max-drop", "100")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["file"]: a for a in manifest["artifacts"]}
    # INT8 where litert-torch's quantizer allows: built, or left out saying why (on this
    # test student its converter refuses a pad's scales), the rest of the export kept
    left = {x["file"]: x["reason"] for x in manifest.get("left_out", [])}
    assert ("model_int8.tflite" in arts) != ("model_int8.tflite" in left)
    if "model_int8.tflite" in left:
        assert "INT8 conversion failed" in left["model_int8.tflite"]
        assert "left out: model_int8.tflite" in res.output
        assert not (out / "model_int8.tflite").exists()
    tfl = arts["model.tflite"]
    assert tfl["backend"] == "litert" and tfl["input_shape"] == [1, 3, 64, 64]
    assert tfl["verification"]["agreement"] >= 0.999 and tfl["litert"]["delegate"] == "XNNPACK"
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    rt, ref = load_runtime(out / "model.tflite", threads=1), load_runtime(out / "model.onnx")
    np.testing.assert_allclose(rt.predict(x), ref.predict(x), atol=1e-3)  # 3 images, batch 1
    timed = runner.invoke(bench_app, ["latency", str(out / "model.tflite"), "--threads", "1",
                                      "--runs", "3", "--warmup", "1"])
    assert timed.exit_code == 0, timed.output
    assert "model.tflite" in timed.output and "litert" in timed.output


def test_a_fully_quantized_models_io_is_quantized_and_dequantized_by_hand_rule():
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    x = np.array([-100.0, -1.26, 0.0, 0.74, 100.0], np.float32)
    q = litert._quantize(x, detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -6, -3, -2, 127]  # round(x/0.5) - 3
    y = litert._dequantize(np.array([-6, -3, 7], np.int8), detail)
    assert y.dtype == np.float32 and y.tolist() == [-1.5, 0.0, 5.0]
    f = np.array([1.5], np.float32)
    assert litert._quantize(f, {"dtype": np.float32, "quantization": (0.0, 0)}) is not None
    ids = np.array([[2, 0]], np.int64)  # an argmax model's class ids: no quantization
    assert litert._dequantize(ids, {"quantization": (0.0, 0)}) is ids


def test_a_dynamic_size_is_refused_on_every_machine(trained_ckpt, tmp_path):
    res = run_export(trained_ckpt, tmp_path / "exp", "--litert", "--dynamic-spatial")
    assert "--litert traces one input size: drop --dynamic-spatial" in str(res.exception)
    assert not (tmp_path / "exp").exists()
