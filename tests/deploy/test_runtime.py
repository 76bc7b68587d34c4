"""load_runtime: backends chosen by suffix, precision checks, refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from compress.models import load_model
from deploy.errors import ManifestError
from deploy.export import torch_predictor
from deploy.runtime import load_runtime
from tests.deploy.conftest import synthetic_batches


def test_torch_checkpoint_runtime(trained_ckpt):
    rt = load_runtime(trained_ckpt)
    assert (rt.backend, rt.precision, rt.device, rt.output) == ("torch", "f32", "cpu", "logits")
    model = load_model(trained_ckpt)
    images = synthetic_batches(rt.spec, "val", n=2)[0][0]
    np.testing.assert_allclose(rt.predict(images), torch_predictor(model)(images), atol=1e-5)
    with pytest.raises(ValueError, match="images must be float32"):
        rt.predict(images[0])
    with pytest.raises(ValueError, match="runs f32 only"):
        load_runtime(trained_ckpt, precision="int8")


def test_refusals_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_runtime(tmp_path / "nope.onnx")
    (tmp_path / "m.mlmodel").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the backend of m.mlmodel"):
        load_runtime(tmp_path / "m.mlmodel")
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(ManifestError, match="m.engine is a TensorRT engine without a manifest"):
        load_runtime(tmp_path / "m.engine")
    with pytest.raises(ValueError, match="unknown precision"):
        load_runtime(tmp_path / "m.engine", precision="int4")


def test_import_deploy_is_light():
    import subprocess

    code = ("import sys, deploy; heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'nncf',"
            " 'tensorrt', 'onnx') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
