"""AOTInductor (issue 24): ``compress export --aoti`` compiles the student into a verified
``model.pt2`` that ``bench latency`` times; what it cannot do is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.devices import cuda_available
from deploy.backends.aoti import build_unavailable
from deploy.errors import BackendUnavailable, ManifestError
from deploy.runtime import backend_for_path, load_runtime
from tests.deploy.conftest import run_export

runner = CliRunner()


def test_pt2_is_the_aoti_backend_and_is_loaded_only_through_its_manifest(tmp_path):
    assert backend_for_path(tmp_path / "model.pt2").name == "aoti"
    stray = tmp_path / "model.pt2"
    stray.write_bytes(b"PK\x03\x04 not ours")  # a package from elsewhere: native code
    with pytest.raises(ManifestError, match="loaded only beside the manifest.json") as e:
        load_runtime(stray)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("extra", "message"), [
    (["--dynamic-spatial"], "--aoti compiles one input size"),
    (["--aoti-device", "npu"], "--aoti-device 'npu': expected cpu or cuda"),
])
def test_what_aoti_cannot_do_is_refused_before_any_work(trained_ckpt, tmp_path, extra, message):
    res = run_export(trained_ckpt, tmp_path / "exp", "--aoti", *extra)
    assert res.exit_code != 0 and message in str(res.exception)
    assert not (tmp_path / "exp").exists()


@pytest.mark.skipif(cuda_available(), reason="a CUDA GPU is present here")
def test_a_cuda_package_without_a_gpu_is_refused_in_one_line(trained_ckpt, tmp_path):
    res = run_export(trained_ckpt, tmp_path / "exp", "--aoti", "--aoti-device", "cuda")
    assert isinstance(res.exception, BackendUnavailable)
    assert "AOTInductor" in str(res.exception) and "\n" not in str(res.exception)
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow  # Inductor compiles the student to C++: about 2 minutes on 2 cores
@pytest.mark.skipif(build_unavailable("cpu") is not None, reason="no C++ compiler here")
def test_export_aoti_verifies_and_bench_times_the_package(trained_ckpt, tmp_path):
    from bench.cli import app as bench_app

    out = tmp_path / "exp"
    res = run_export(trained_ckpt, out, "--aoti")
    assert res.exit_code == 0, res.output
    arts = {a["file"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    pt2 = arts["model.pt2"]
    assert pt2["backend"] == "aoti" and pt2["aoti"]["device"] == "cpu"
    assert pt2["verification"]["agreement"] >= 0.999
    rt, ref = load_runtime(out / "model.pt2", threads=1), load_runtime(out / "model.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(rt.predict(x), ref.predict(x), atol=1e-3)  # dynamic batch
    timed = runner.invoke(bench_app, ["latency", str(out / "model.pt2"), "--threads", "1",
                                      "--runs", "5", "--warmup", "1"])
    assert timed.exit_code == 0, timed.output
    assert "model.pt2" in timed.output and "aoti" in timed.output
