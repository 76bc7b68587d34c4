"""ExecuTorch (issue 24): ``compress export --executorch`` lowers the student to XNNPACK
``.pte`` programs (f32, and INT8 by PT2E with ``--int8``), verified like every artifact and
timed by ``bench latency``; what it cannot do is refused in one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.backends import executorch as et
from deploy.errors import BackendUnavailable, ManifestError
from deploy.runtime import backend_for_path, load_runtime
from tests.deploy.conftest import run_export

runner = CliRunner()
needs_executorch = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None,
    reason=f"ExecuTorch is not installed here ({et.INSTALL})")


def test_pte_is_the_executorch_backend_and_needs_its_manifest(tmp_path):
    assert backend_for_path(tmp_path / "model.pte").name == "executorch"
    stray = tmp_path / "model.pte"
    stray.write_bytes(b"not a program")
    with pytest.raises(ManifestError, match="a .pte carries no segcompress spec") as e:
        load_runtime(stray)
    assert "\n" not in str(e.value)


def test_without_executorch_the_export_is_refused_before_any_work(trained_ckpt, tmp_path,
                                                                   monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "executorch" else real(name, *a))
    res = run_export(trained_ckpt, tmp_path / "exp", "--executorch")
    assert isinstance(res.exception, BackendUnavailable)
    assert "ExecuTorch: not installed (pip install 'segcompress[executorch]')" in \
        str(res.exception)
    assert not (tmp_path / "exp").exists()


def test_executorch_runs_on_the_cpu_only():
    assert et.available("cuda") == "ExecuTorch: runs on the CPU here (XNNPACK), not cuda"


@pytest.mark.parametrize(("extra", "message"), [
    (["--dynamic-spatial"], "--executorch traces one input size"),
])
def test_what_executorch_cannot_do_is_refused_before_any_work(trained_ckpt, tmp_path, extra,
                                                              message):
    res = run_export(trained_ckpt, tmp_path / "exp", "--executorch", *extra)
    assert res.exit_code != 0 and message in str(res.exception)
    assert not (tmp_path / "exp").exists()


@needs_executorch
@pytest.mark.slow  # two XNNPACK lowerings and a PT2E calibration: about 90 s on 2 cores
def test_export_executorch_verifies_f32_and_int8_and_bench_times_them(trained_ckpt, tmp_path):
    from bench.cli import app as bench_app

    out = tmp_path / "exp"
    res = run_export(trained_ckpt, out, "--executorch", "--int8", "--calib-size", "4",
                  "--max-drop", "100")
    assert res.exit_code == 0, res.output
    arts = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    f32, int8 = arts["model.pte"], arts["model_int8.pte"]
    assert f32["backend"] == int8["backend"] == "executorch"
    assert f32["input_shape"] == [1, 3, 64, 64] and f32["executorch"]["delegate"] == "XNNPACK"
    assert f32["verification"]["agreement"] >= 0.999
    assert int8["quantization"]["method"].startswith("pt2e")
    assert int8["quantization"]["calibration_images"] == 4
    # INT8 weights: the program is much smaller than the f32 one
    assert (out / "model_int8.pte").stat().st_size < 0.6 * (out / "model.pte").stat().st_size
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    rt, ref = load_runtime(out / "model.pte", threads=1), load_runtime(out / "model.onnx")
    assert rt.precision == "f32" and load_runtime(out / "model_int8.pte").precision == "int8"
    np.testing.assert_allclose(rt.predict(x), ref.predict(x), atol=1e-3)  # 3 images, batch 1
    timed = runner.invoke(bench_app, ["latency", str(out / "model.pte"),
                                      str(out / "model_int8.pte"), "--threads", "1",
                                      "--runs", "3", "--warmup", "1"])
    assert timed.exit_code == 0, timed.output
    assert "model_int8.pte" in timed.output and "executorch" in timed.output
