"""ONNX export: round trip through ONNX Runtime against PyTorch, argmax variant, axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.models import create_model, load_model
from deploy.errors import VerificationError
from deploy.export import export_onnx, torch_predictor, verify_onnx
from deploy.metadata import spec_from_onnx
from deploy.runtime import load_runtime
from tests.deploy.conftest import SIZE, synthetic_batches, tiny_spec


@pytest.fixture(scope="module")
def model_and_spec(trained_ckpt):
    return load_model(trained_ckpt, return_spec=True)


@pytest.fixture(scope="module")
def batches(model_and_spec):
    return synthetic_batches(model_and_spec[1], "val", n=8)


def test_onnx_round_trip_matches_pytorch(tmp_path, model_and_spec, batches):
    model, spec = model_and_spec
    path = export_onnx(model, tmp_path / "m.onnx", spec, size=SIZE)
    res = verify_onnx(path, model, batches, class_names=spec.class_names)
    assert res["agreement"] >= 0.999
    assert res["max_abs_diff"] < 1e-3
    assert res["miou"] == pytest.approx(res["miou_reference"], abs=1e-3)
    rt = load_runtime(path)
    assert (rt.backend, rt.precision, rt.output) == ("onnxruntime", "f32", "logits")
    images = batches[0][0]
    torch.testing.assert_close(torch.from_numpy(rt.predict(images)),
                               torch.from_numpy(torch_predictor(model)(images)),
                               atol=1e-4, rtol=1e-4)
    # the lone .onnx describes itself
    assert spec_from_onnx(path).class_names == spec.class_names
    assert rt.spec.input_size == list(SIZE)


def test_argmax_variant_gives_the_same_class_ids(tmp_path, model_and_spec, batches):
    model, spec = model_and_spec
    path = export_onnx(model, tmp_path / "ids.onnx", spec, size=SIZE, argmax=True)
    rt = load_runtime(path)
    assert rt.spec.output == "argmax"
    images = batches[0][0]
    ids = rt.predict(images)
    assert ids.dtype == np.int64 and ids.shape == (images.shape[0], *SIZE)
    expected = torch_predictor(model)(images).argmax(1)
    assert (ids == expected).mean() >= 0.999
    res = verify_onnx(path, model, batches)
    assert res["agreement"] >= 0.999 and res["max_abs_diff"] is None


def test_static_batch_and_dynamic_spatial_axes(tmp_path, model_and_spec, batches):
    model, spec = model_and_spec
    images = np.concatenate([b[0] for b in batches])[:3]  # 3 images: not the batch of 2
    static = load_runtime(export_onnx(model, tmp_path / "s.onnx", spec, size=SIZE, batch_size=2,
                                      dynamic_batch=False))
    assert static.info["input_shape"][0] == 2
    np.testing.assert_allclose(static.predict(images), torch_predictor(model)(images), atol=1e-4)
    dyn = load_runtime(export_onnx(model, tmp_path / "d.onnx", spec, size=SIZE,
                                   dynamic_spatial=True))
    big = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
    np.testing.assert_allclose(dyn.predict(big), torch_predictor(model)(big), atol=1e-4)


def test_verification_failure_is_clear(tmp_path, model_and_spec, batches):
    model, spec = model_and_spec
    path = export_onnx(model, tmp_path / "m.onnx", spec, size=SIZE)
    other = create_model(tiny_spec()).eval()  # different weights: must not pass as the same
    with pytest.raises(VerificationError, match=r"verify: ONNX Runtime and PyTorch agree on"):
        verify_onnx(path, other, batches)
