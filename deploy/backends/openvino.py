"""OpenVINO IR (``.xml`` + ``.bin``): conversion from ONNX, compilation that reports what
really runs, and the runtime.

On CPUs with bf16 support (AVX512-BF16, AMX) OpenVINO executes f32 models in bf16 by
default; :func:`compile_openvino` reads the precision each layer executes from the
compiled runtime model, so callers see ``bf16`` instead of assuming ``f32``. Pass
``precision="f32"`` to force f32 (``INFERENCE_PRECISION_HINT``).
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from compress.devices import cuda_missing, is_cuda
from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.backends.base import Backend, Runtime, agreed_spec, check_shapes
from deploy.errors import (
    MESSAGE_CHARS,
    BackendUnavailable,
    DeployError,
    ManifestError,
    first_line,
    one_line,
)

NAME = "openvino"
LABEL = "OpenVINO"
SUFFIXES = (".xml",)
RT_INFO_KEY = ["segcompress", "spec"]
HINTS = {"f32": "f32", "bf16": "bf16", "fp16": "f16"}
OV_TYPES = {"f32": "f32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}
COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected",
                  "MatMul", "BinaryConvolution"}
DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}


def convert_to_openvino(onnx_path: str | Path, xml_path: str | Path,
                        spec: ModelSpec | None = None) -> Path:
    """Convert an ONNX model (f32 or QDQ int8) to OpenVINO IR ``.xml`` + ``.bin``.

    Weights are kept as they are (no fp16 compression), so the f32 IR is numerically the
    ONNX model; QDQ pairs become FakeQuantize nodes that the CPU plugin runs in int8.

    Returns:
        ``xml_path`` (the ``.bin`` is beside it, same stem).

    Raises:
        DeployError: conversion failed (reason given).
    """
    import openvino as ov

    xml_path = Path(xml_path)
    try:
        model = ov.convert_model(str(onnx_path))
        if spec is not None:
            model.set_rt_info(json.dumps(spec.to_dict()), RT_INFO_KEY)
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own classes
        raise DeployError(f"openvino: converting {Path(onnx_path).name} failed: "
                          f"{first_line(e)}") from None
    return xml_path


def spec_from_openvino(model, source: str | Path | None = None) -> ModelSpec | None:
    """The spec stored by :func:`convert_to_openvino` in the IR's rt_info, checked, or
    None; ``source`` (the ``.xml``) names the file in errors."""
    if model.has_rt_info(RT_INFO_KEY):
        return ModelSpec.from_dict(json.loads(model.get_rt_info(RT_INFO_KEY).astype(str)), source)
    return None


def executed_precisions(compiled) -> dict[str, dict[str, int]]:
    """``{layer type: {runtime precision: count}}`` for compute layers of a compiled model."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        kind = info["layerType"].astype(str)
        if kind in COMPUTE_LAYERS:
            counts.setdefault(kind, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {k: dict(v) for k, v in counts.items()}


def precision_label(layers: dict[str, dict[str, int]], hint: str) -> str:
    """``int8`` when compute layers run quantized, else their float precision."""
    totals: Counter = Counter()
    for per_type in layers.values():
        totals.update(per_type)
    if totals.get("i8", 0) + totals.get("u8", 0):
        return "int8"
    if totals:
        return OV_TYPES.get(totals.most_common(1)[0][0], totals.most_common(1)[0][0])
    return OV_TYPES.get(hint, hint)


def compile_openvino(xml_path: str | Path, device: str = "cpu", threads: int | None = None,
                     precision: str | None = None):
    """Read and compile an IR.

    Args:
        device: ``cpu``, ``gpu``, ``npu`` or ``auto`` (or an OpenVINO device name).
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``f32``, ``bf16`` or ``fp16`` for ``INFERENCE_PRECISION_HINT`` (the
            float part of an int8 model too); ``int8`` checks that the model runs
            quantized; None keeps the device default.

    Returns:
        ``(compiled_model, model, info)`` with ``info = {"device", "precision",
        "inference_precision_hint", "layer_precisions", "threads"}``.

    Raises:
        BackendUnavailable: the device is not available.
        ValueError: a precision OpenVINO cannot be told to use.
    """
    import openvino as ov

    core = ov.Core()
    ov_device = DEVICES.get(device.lower(), device)
    if device.lower().startswith("cuda"):
        raise InputError("runtime: OpenVINO runs on cpu, gpu (Intel) or npu, not CUDA; use the "
                         ".onnx or a TensorRT engine on NVIDIA GPUs")
    available = {d.split(".")[0] for d in core.available_devices}
    if ov_device != "AUTO" and ov_device.split(".")[0] not in available:
        raise BackendUnavailable(f"runtime: OpenVINO device {ov_device} not available here "
                                 f"(available: {', '.join(core.available_devices)})")
    config: dict[str, Any] = {}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None and precision != "int8":  # int8 comes from FakeQuantize nodes
        if precision not in HINTS:
            raise InputError(f"runtime: OpenVINO precision must be f32, bf16, fp16 or int8, "
                             f"not {precision}")
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    model = core.read_model(str(xml_path))
    compiled = core.compile_model(model, ov_device, config)
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:  # devices without the property
        hint = HINTS.get(precision or "f32", "f32")
    layers = executed_precisions(compiled)
    if precision == "int8" and precision_label(layers, hint) != "int8":
        raise InputError(f"runtime: {Path(xml_path).name} does not run in int8 (it is not a "
                         "quantized model)")
    info = {
        "device": ov_device,
        "precision": precision_label(layers, hint),
        "inference_precision_hint": OV_TYPES.get(hint, hint),
        "layer_precisions": layers,
        "threads": _property(compiled, "INFERENCE_NUM_THREADS"),
    }
    return compiled, model, info


def _property(compiled, name: str):
    try:
        value = compiled.get_property(name)
    except RuntimeError:
        return None
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class OpenVINORuntime(Runtime):
    """An OpenVINO IR (``.xml`` + ``.bin``) on ``cpu`` (default), ``gpu`` or ``npu``."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        compiled, model, info = compile_openvino(path, device=device, threads=threads,
                                                 precision=precision)
        spec = agreed_spec(path, spec, spec_from_openvino(model, path))
        if spec is None:
            raise ManifestError(f"runtime: {path} carries no segcompress spec and no "
                                "manifest.json lists it: export it with compress export")
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        out = model.outputs[0].get_partial_shape()
        self.graph_outputs = [o.get_any_name() for o in compiled.outputs]
        check_shapes(path, spec, [d.get_length() if d.is_static else None for d in shape],
                     [d.get_length() if d.is_static else None for d in out],
                     [n for o in compiled.outputs for n in o.get_names()])
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(path, spec, device, info["precision"], info)

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = self.output_names

        def run(x):
            try:
                self.request.infer({0: x})
            except Exception as e:  # noqa: BLE001 - OpenVINO's own error types, one line
                raise DeployError(f"runtime: OpenVINO failed on {self.path} with input "
                                  f"{list(x.shape)}: {one_line(e, limit=MESSAGE_CHARS)}") from None
            if len(names) == 1:  # a single-output IR's one output, whatever its name
                return {names[0]: self.request.get_output_tensor(0).data.copy()}
            return {n: self.request.get_tensor(n).data.copy() for n in names}

        return in_batches(run, images, self.fixed_batch)


def convert(onnx_path: Path, dst: Path, *, spec: ModelSpec | None = None,
            precision: str | None = None, size: tuple[int, int] | None = None) -> Path:
    """The registry's converter: :func:`convert_to_openvino` (the IR keeps the ONNX
    file's precision, so ``precision`` and ``size`` are not needed)."""
    return convert_to_openvino(onnx_path, dst, spec)


def weights_file(path: Path) -> list[Path]:
    """The ``.bin`` of an IR ``.xml``, where it is there."""
    weights = path.with_suffix(".bin")
    return [weights] if weights.is_file() else []


def available(device: str) -> str | None:
    """Why OpenVINO cannot run on ``device`` here (CUDA asked for, or not installed), or
    None. Intel GPU/NPU devices are checked when a model is compiled."""
    if is_cuda(device):
        return cuda_missing(LABEL, device) or f"{LABEL}: runs on the CPU here (no NVIDIA GPU plugin)"
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO: not installed (pip install openvino)"
    return None


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> OpenVINORuntime:
    """Without a manifest the spec comes from the IR's rt_info."""
    return OpenVINORuntime(path, spec, device, threads, precision)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES,
                  precisions=("f32", "bf16", "fp16", "int8"), devices=("cpu",),
                  libraries=("openvino",), available=available, load=load,
                  packages=("openvino",), builds=("f32", "int8"), convert=convert,
                  sets_precision=True, tool="benchmark_app", companions=weights_file)
