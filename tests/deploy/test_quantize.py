"""INT8 quantization on its own: IgnoredScope layers stay float and are reported by name."""

from __future__ import annotations

import onnx
import pytest

from compress.models import load_model
from deploy.errors import QuantizationError
from deploy.export import export_onnx
from deploy.metadata import spec_from_onnx
from deploy.quantize import float_layers_of, quantize_int8, quantized_layers, weighted_layers
from tests.deploy.conftest import SIZE, synthetic_batches


@pytest.fixture(scope="module")
def fp32(trained_ckpt, tmp_path_factory):
    model, spec = load_model(trained_ckpt, return_spec=True)
    path = export_onnx(model, tmp_path_factory.mktemp("q") / "m.onnx", spec, size=SIZE)
    calib = [img for images, _ in synthetic_batches(spec, "train", n=8) for img in images]
    return onnx.load(str(path)), calib


def test_float_layers_stay_float_and_are_named(fp32):
    proto, calib = fp32
    keep = weighted_layers(proto)[-1]  # the segmentation head
    full = quantize_int8(proto, calib, preset="performance", calib_stat="minmax", subset_size=8)
    q = quantize_int8(proto, calib, preset="performance", calib_stat="minmax", subset_size=8,
                      float_layers=[keep])
    assert keep in quantized_layers(full)
    assert quantized_layers(full) - quantized_layers(q) == {keep}
    assert keep in float_layers_of(q)
    assert spec_from_onnx(q).class_names == spec_from_onnx(proto).class_names


def test_bad_quantization_options_name_the_valid_ones(fp32):
    proto, calib = fp32
    with pytest.raises(QuantizationError, match="valid: default, minmax"):
        quantize_int8(proto, calib, calib_stat="nope")
    with pytest.raises(QuantizationError, match="valid: performance, mixed"):
        quantize_int8(proto, calib, preset="fast")
