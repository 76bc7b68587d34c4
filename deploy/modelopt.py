"""INT8 for TensorRT with NVIDIA ModelOpt's ONNX PTQ (``modelopt.onnx.quantization``).

Measured on CamVid (README, docs/deploy.md) it keeps about 0.3 more mIoU points than
NNCF's ``performance`` graph; its graph follows TensorRT's Q/DQ rules (signed int8, zero
point 0). It is optional: ``nvidia-modelopt[onnx]`` pins ``onnxruntime-gpu`` and a CUDA
build of torch, so it comes with the ``modelopt`` extra, not the CPU install. Calibration
runs through ONNX Runtime on the CPU; layers not quantized stay f32 (ONNX Runtime on the
CPU runs no fp16, and the scored graph must be the one TensorRT builds from).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from deploy.errors import QuantizationError, first_line

INSTALL = "pip install 'segcompress[modelopt]' (brings onnxruntime-gpu and a CUDA torch)"
CALIBRATION_METHODS = ("entropy", "max")


def unavailable_reason() -> str | None:
    """Why ModelOpt's ONNX quantizer cannot run here, or None."""
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a missing package or a broken CUDA stack
        return f"NVIDIA ModelOpt is not importable here ({type(e).__name__}: " \
               f"{str(e).splitlines()[0] if str(e) else ''}): {INSTALL}"
    return None


def quantize_int8_modelopt(onnx_path: str | Path, calibration: Iterable[np.ndarray], *,
                           method: str = "entropy", float_layers: Sequence[str] = ()):
    """Quantize an f32 ONNX file to INT8 (QDQ) with ModelOpt.

    Args:
        onnx_path: the f32 model (its ``segcompress.spec`` metadata is copied over).
        calibration: images, float32 ``[3, H, W]`` normalised, from the training split.
        method: ModelOpt's calibration, ``entropy`` (its default) or ``max``.
        float_layers: node names kept in float (``nodes_to_exclude``).

    Returns:
        The quantized ``onnx.ModelProto``.

    Raises:
        QuantizationError: ModelOpt missing, bad option, or ModelOpt failed (reason given).
    """
    import onnx

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"quantize: unknown ModelOpt calibration {method!r}; valid: "
                                f"{', '.join(CALIBRATION_METHODS)}")
    why = unavailable_reason()
    if why:
        raise QuantizationError(f"quantize: {why}")
    from modelopt.onnx.quantization import quantize

    data = np.stack([np.asarray(x, dtype=np.float32) for x in calibration])
    if data.ndim != 4 or not len(data):
        raise QuantizationError(f"quantize: calibration images must be [3, H, W]; got "
                                f"{list(data.shape[1:])} x {len(data)}")
    src = onnx.load(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix="segcompress-modelopt-") as tmp:
        out = Path(tmp) / "model_int8.onnx"
        try:
            quantize(str(onnx_path), quantize_mode="int8", calibration_data=data,
                     calibration_method=method, calibration_eps=["cpu"],
                     high_precision_dtype="fp32", nodes_to_exclude=list(float_layers) or None,
                     output_path=str(out), log_level="WARNING")
        except Exception as e:  # noqa: BLE001 - ModelOpt raises many types
            raise QuantizationError(f"quantize: ModelOpt failed: {first_line(e)}") from None
        q = onnx.load(str(out))
    del q.metadata_props[:]
    q.metadata_props.extend(src.metadata_props)
    return q
