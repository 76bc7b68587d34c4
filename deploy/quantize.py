"""INT8 post-training quantization of an ONNX model with NNCF (QDQ), with an accuracy budget.

Calibration images come from the training split; accuracy is measured on the scored
split. The result is an ``onnx.ModelProto`` with QuantizeLinear/DequantizeLinear pairs:
ONNX Runtime runs it as int8 on the CPU, OpenVINO turns the pairs into FakeQuantize,
and TensorRT reads it as an explicitly quantized network (symmetric scales only, so
use the ``performance`` preset for TensorRT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from deploy.errors import QuantizationError, first_line

PRESETS = ("performance", "mixed")
# calibration statistic for activation ranges -> nncf RangeEstimatorParametersSet member
CALIB_STATS = {
    "default": None,
    "minmax": "MINMAX",
    "mean_minmax": "MEAN_MINMAX",
    "median_minmax": "MEDIAN_MINMAX",
    "mean_no_outliers_minmax": "MEAN_NO_OUTLIERS_MINMAX",
    "mean_quantile": "MEAN_QUANTILE",
    "histogram": "HISTOGRAM",
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _input(proto) -> tuple[str, int | None]:
    """Input name and fixed batch size (None when symbolic)."""
    inp = proto.graph.input[0]
    dim = inp.type.tensor_type.shape.dim[0]
    return inp.name, (dim.dim_value if dim.HasField("dim_value") else None)


def _batch(image: np.ndarray, fixed: int | None) -> np.ndarray:
    x = np.ascontiguousarray(image, np.float32)
    if x.ndim == 3:
        x = x[None]
    if fixed and x.shape[0] != fixed:
        x = np.repeat(x[:1], fixed, 0)
    return x


TARGETS = ("cpu", "tensorrt")


def _advanced(calib_stat: str):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if calib_stat not in CALIB_STATS:
        raise QuantizationError(f"quantize: unknown calibration statistic {calib_stat!r}; "
                                f"valid: {', '.join(CALIB_STATS)}")
    if CALIB_STATS[calib_stat] is None:
        return None
    ranges = getattr(RangeEstimatorParametersSet, CALIB_STATS[calib_stat])
    return AdvancedQuantizationParameters(activations_range_estimator_params=ranges)


def to_signed_symmetric(proto) -> int:
    """Rewrite, in place, every unsigned zero-point-0 Q/DQ (``uint8``, what NNCF's
    ``performance`` preset puts after a ReLU) as signed ``int8`` with zero point 0 and the
    scale times 255/127: the same range at one bit less, which is how TensorRT (int8
    Q/DQ only) runs it. NNCF cannot force signed activations on ONNX models itself.

    Returns:
        How many Q/DQ nodes were rewritten.

    Raises:
        QuantizationError: an unsigned quantizer with a non-zero zero point (asymmetric:
            quantize with the ``performance`` preset).
    """
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    renamed: dict[str, str] = {}
    outputs: set[str] = set()
    count = 0
    for node in proto.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.UINT8:
            continue
        if numpy_helper.to_array(zp).any():
            raise QuantizationError(f"quantize: {node.name} is asymmetric (non-zero uint8 zero "
                                    "point); TensorRT needs the performance preset")
        for k, make in ((1, lambda a: (a * (255.0 / 127.0)).astype(a.dtype)),
                        (2, lambda a: np.zeros(a.shape, np.int8))):
            old = node.input[k]
            if old not in renamed:
                new = f"{old}_signed"
                proto.graph.initializer.append(
                    numpy_helper.from_array(make(numpy_helper.to_array(inits[old])), new))
                renamed[old] = new
            node.input[k] = renamed[old]
        if node.op_type == "QuantizeLinear":
            outputs.add(node.output[0])
        count += 1
    for info in proto.graph.value_info:  # the quantized tensors are int8 now
        if info.name in outputs:
            info.type.tensor_type.elem_type = TensorProto.INT8
    used = {i for n in proto.graph.node for i in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used or t.name not in renamed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return count


def _preset(preset: str):
    import nncf

    if preset not in PRESETS:
        raise QuantizationError(f"quantize: unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    return nncf.QuantizationPreset(preset)


def _dataset(proto, images: Iterable[np.ndarray]):
    import nncf

    name, fixed = _input(proto)
    return nncf.Dataset(images, lambda item: {name: _batch(item[0] if isinstance(item, tuple)
                                                           else item, fixed)})


def quantize_int8(model, calibration: Iterable[np.ndarray], *, preset: str = "mixed",
                  calib_stat: str = "default", subset_size: int = 300,
                  float_layers: Sequence[str] = (), fast_bias_correction: bool = True,
                  target: str = "cpu"):
    """Quantize an f32 ONNX model to INT8 (QDQ) with ``nncf.quantize``.

    Args:
        model: ``onnx.ModelProto`` (f32).
        calibration: re-iterable images, float32 ``[3, H, W]`` normalised, from the
            training split (never the split that is scored).
        preset: ``performance`` (symmetric activations; needed for TensorRT) or ``mixed``
            (asymmetric activations, often more accurate on CPU).
        calib_stat: activation range statistic (:data:`CALIB_STATS`).
        subset_size: calibration images used.
        float_layers: node names kept in float (``nncf.IgnoredScope``).
        target: ``cpu``, or ``tensorrt`` (unsigned quantizers rewritten as signed, see
            :func:`to_signed_symmetric`).

    Returns:
        The quantized ``onnx.ModelProto`` (metadata kept).

    Raises:
        QuantizationError: bad option, or NNCF failed (reason given).
    """
    import nncf

    if target not in TARGETS:
        raise QuantizationError(f"quantize: unknown target {target!r}; valid: {', '.join(TARGETS)}")
    kwargs: dict[str, Any] = {
        "preset": _preset(preset),
        "subset_size": subset_size,
        "fast_bias_correction": fast_bias_correction,
        "advanced_parameters": _advanced(calib_stat),
    }
    if float_layers:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(float_layers))
    try:
        quantized = nncf.quantize(model, _dataset(model, calibration), **kwargs)
    except Exception as e:  # noqa: BLE001 - NNCF raises many types
        raise QuantizationError(f"quantize: nncf.quantize failed: {first_line(e)}") from None
    _copy_metadata(model, quantized)
    if target == "tensorrt":
        to_signed_symmetric(quantized)
    return quantized


# images accuracy control may score in all: ranking ~60 layer groups on 50 images and 20
# restoring steps fit; re-ranking them all after every unhelpful step does not
MAX_SCORED_IMAGES = 10_000


class _EvaluationBudget(Exception):
    """Raised inside NNCF's loop when accuracy control used up its images."""


def quantize_int8_with_accuracy_control(
        model, calibration: Iterable[np.ndarray],
        validation: Iterable[tuple[np.ndarray, np.ndarray]],
        *, class_names: list[str], ignore_index: int, max_drop: float, preset: str = "mixed",
        calib_stat: str = "default", subset_size: int = 300, max_float_layers: int = 20,
        ranking_subset_size: int = 50, float_layers: Sequence[str] = (), target: str = "cpu",
        max_images: int = MAX_SCORED_IMAGES, show: bool = True):
    """``nncf.quantize_with_accuracy_control``: quantize, then put the layers that cost the
    most mIoU back to float, one group at a time, until the drop fits ``max_drop``.

    Args:
        model: ``onnx.ModelProto`` (f32).
        calibration: images from the training split (see :func:`quantize_int8`).
        validation: re-iterable ``(image [3, H, W], mask [H, W])`` from the scored split.
        max_drop: allowed absolute mIoU drop, as a fraction (0.01 = 1 mIoU point).
        max_float_layers: at most this many groups of layers are returned to float.
        ranking_subset_size: validation images used to rank layer sensitivity.
        max_images: at most this many images scored in all (NNCF's ranking of every
            layer group and each restoring step), counted on a progress bar.
        show: the progress bar.

    Returns:
        The quantized ``onnx.ModelProto`` (check its mIoU: NNCF returns its best attempt
        even when the budget cannot be met).

    Raises:
        QuantizationError: NNCF failed (reason given), or ``max_images`` ran out.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters
    from tqdm import tqdm

    from deploy.arrays import in_batches

    name, fixed = _input(model)
    # NNCF scores every layer group on the ranking images (one validate call per image),
    # and ranks the rest again after each step that did not help: on data unlike the
    # model's that ran for hours. Every image scored is counted on a progress bar, and
    # accuracy control stops at max_images.
    progress = tqdm(total=max_images, desc="int8 accuracy control (images scored)",
                    disable=not show, leave=False)
    scored = [0]

    def validate(proto, items) -> float:
        session = _session(proto)
        scorer = MiouScorer(class_names, ignore_index)
        for image, mask in items:
            if scored[0] >= max_images:
                raise _EvaluationBudget()
            scored[0] += 1
            progress.update()
            out = in_batches(lambda x: session.run(None, {name: x})[0], _batch(image, None), fixed)
            scorer.update(out, np.asarray(mask)[None])
        return scorer.miou()

    items = validation if isinstance(validation, Sequence) else list(validation)
    restorer = AdvancedAccuracyRestorerParameters(
        max_num_iterations=max_float_layers, num_ranking_workers=1,
        ranking_subset_size=min(ranking_subset_size, len(items)))
    kwargs: dict[str, Any] = {}
    if float_layers:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(float_layers))
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model, _dataset(model, calibration), nncf.Dataset(items), validate,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=_preset(preset),
            subset_size=subset_size,
            advanced_quantization_parameters=_advanced(calib_stat),
            advanced_accuracy_restorer_parameters=restorer, **kwargs)
    except _EvaluationBudget:
        raise QuantizationError(
            f"quantize: accuracy control stopped after scoring {max_images} images (ranking "
            "and restoring layers) without meeting the mIoU budget; nothing was "
            "written: raise --max-drop, keep layers in float (--keep-float), or calibrate "
            "on images like the model's own") from None
    except Exception as e:  # noqa: BLE001 - NNCF raises many types
        raise QuantizationError(f"quantize: nncf.quantize_with_accuracy_control failed: "
                                f"{first_line(e)}") from None
    finally:
        progress.close()
    _copy_metadata(model, quantized)
    if target == "tensorrt":  # NNCF ranked layers on its own graph; the caller re-scores this one
        to_signed_symmetric(quantized)
    return quantized


def quantized_layers(proto) -> set[str]:
    """Names of weighted nodes (Conv, Gemm, MatMul...) fed by a DequantizeLinear."""
    producers = {out: n.op_type for n in proto.graph.node for out in n.output}
    return {n.name for n in proto.graph.node
            if n.op_type in WEIGHTED_OPS
            and any(producers.get(i) == "DequantizeLinear" for i in n.input[:2])}


def weighted_layers(proto) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type in WEIGHTED_OPS]


def float_layers_of(proto) -> list[str]:
    """Weighted layers of a quantized model that still run in float."""
    q = quantized_layers(proto)
    return [n for n in weighted_layers(proto) if n not in q]


def _copy_metadata(src, dst) -> None:
    keys = {p.key for p in dst.metadata_props}
    for p in src.metadata_props:
        if p.key not in keys:
            dst.metadata_props.add(key=p.key, value=p.value)


def _session(proto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


class MiouScorer:
    """Confusion-matrix mIoU of predictions (logits or class ids) against masks."""

    def __init__(self, class_names: list[str], ignore_index: int) -> None:
        import torch

        self.class_names, self.ignore_index = class_names, ignore_index
        self.conf = torch.zeros(len(class_names), len(class_names), dtype=torch.int64)

    def update(self, out: np.ndarray, masks: np.ndarray) -> None:
        import torch

        from compress.metrics import update_confusion
        from deploy.arrays import class_ids

        update_confusion(self.conf, torch.from_numpy(class_ids(out)),
                         torch.from_numpy(np.asarray(masks, np.int64)), self.ignore_index)

    def miou(self) -> float:
        from compress.metrics import scores

        return scores(self.conf, self.class_names)["miou"]
