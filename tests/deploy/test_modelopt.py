"""ModelOpt's ONNX INT8 for TensorRT (deploy/modelopt.py): runs where `modelopt` imports
(the `modelopt` extra), skips with the reason elsewhere; the refusal without it is tested
everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.errors import QuantizationError
from deploy.modelopt import quantize_int8_modelopt, unavailable_reason

WHY = unavailable_reason()


@pytest.mark.skipif(WHY is None, reason="ModelOpt is installed here")
def test_without_modelopt_one_line_names_the_extra(tmp_path):
    with pytest.raises(QuantizationError, match=r"segcompress\[modelopt\]"):
        quantize_int8_modelopt(tmp_path / "m.onnx", [np.zeros((3, 32, 32), np.float32)])


def test_unknown_calibration_method_refused(tmp_path):
    with pytest.raises(QuantizationError, match="'median'"):
        quantize_int8_modelopt(tmp_path / "m.onnx", [], method="median")


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_modelopt_graph_is_signed_symmetric_and_close_to_f32(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    from compress.models import create_model
    from deploy.backends.tensorrt import check_qdq_graph
    from deploy.export import export_onnx
    from deploy.metadata import SPEC_METADATA_KEY
    from tests.conftest import tiny_spec

    spec = tiny_spec(decoder_channels=[32, 32, 16, 16, 16])
    torch.manual_seed(0)
    path = export_onnx(create_model(spec).eval(), tmp_path / "m.onnx", spec, size=(64, 64),
                       simplify=False)
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((3, 64, 64)).astype(np.float32) for _ in range(8)]
    q = quantize_int8_modelopt(path, images)
    assert any(p.key == SPEC_METADATA_KEY for p in q.metadata_props)
    init = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zps = [init[n.input[2]] for n in q.graph.node
           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in init]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    check_qdq_graph(q)
    x = np.stack(images[:2])
    f32 = ort.InferenceSession(str(path)).run(None, {"images": x})[0]
    onnx.save(q, str(tmp_path / "q.onnx"))
    i8 = ort.InferenceSession(str(tmp_path / "q.onnx")).run(None, {"images": x})[0]
    assert (f32.argmax(1) == i8.argmax(1)).mean() > 0.8


def _export(tmp_path, *extra):
    from typer.testing import CliRunner

    from compress.models import create_model, save_checkpoint
    from segcompress.cli import app
    from tests.conftest import tiny_spec

    spec = tiny_spec(decoder_channels=[32, 32, 16, 16, 16])
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(spec), spec, epoch=1)
    out = tmp_path / "export"
    args = ["export", str(ckpt), "--out", str(out), "--int8", "--int8-method", "modelopt",
            "--calib-size", "8", "--val-size", "4", "--max-drop", "100", *extra]
    return CliRunner().invoke(app, args), out


def test_modelopt_needs_the_tensorrt_graph(tmp_path):
    from compress.errors import UserError

    res, out = _export(tmp_path)
    assert isinstance(res.exception, UserError)
    assert str(res.exception) == ("export: --int8-method modelopt builds TensorRT's INT8 graph: "
                                  "add --target tensorrt (or --trt)")
    assert not out.exists()


@pytest.mark.skipif(WHY is None, reason="ModelOpt is installed here")
def test_export_without_modelopt_names_the_extra(tmp_path):
    from compress.errors import UserError

    res, out = _export(tmp_path, "--target", "tensorrt")
    assert isinstance(res.exception, UserError)
    assert "segcompress[modelopt]" in str(res.exception) and "\n" not in str(res.exception)
    assert not out.exists()


@pytest.mark.skipif(WHY is not None, reason=WHY or "")
def test_export_with_modelopt_is_manifested_and_checked(tmp_path):
    import json

    res, out = _export(tmp_path, "--target", "tensorrt")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model_int8.onnx")
    assert entry["quantization"]["method"] == "modelopt.onnx.quantization"
    assert entry["quantization"]["target"] == "tensorrt"
    assert "ModelOpt ONNX PTQ" in res.output and "all signed symmetric" in res.output
