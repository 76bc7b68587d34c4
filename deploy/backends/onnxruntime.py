"""ONNX Runtime: an exported ``.onnx`` (f32, fp16 or QDQ int8) on the CPU or on CUDA.

The ONNX file itself comes from :mod:`deploy.export` (every other artifact is built from
it) and INT8 graphs from :mod:`deploy.quantize`; this module runs them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from compress.devices import cuda_missing
from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.backends.base import (
    INSTALL_GPU,
    Backend,
    Runtime,
    agreed_spec,
    check_shapes,
)
from deploy.errors import (
    MESSAGE_CHARS,
    BackendUnavailable,
    DeployError,
    ManifestError,
    first_line,
    one_line,
)
from deploy.metadata import spec_from_onnx

NAME = "onnxruntime"
LABEL = "ONNX"
SUFFIXES = (".onnx",)


def external_data_files(path: Path) -> list[Path]:
    """The external-data files beside an ONNX model that its initializers point to."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable ONNX: no companions to count
        return []
    files = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and (path.parent / entry.value).is_file():
                files.add(entry.value)
    return [path.parent / f for f in sorted(files)]


def onnx_precision(proto) -> str:
    """``int8`` for a QDQ / QLinear model, ``fp16`` for a float16 input, else ``f32``."""
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"}:
        return "int8"
    if proto.graph.input and proto.graph.input[0].type.tensor_type.elem_type == 10:  # FLOAT16
        return "fp16"
    return "f32"


class OnnxRuntime(Runtime):
    """An ONNX model under ONNX Runtime (``device`` ``cpu`` or ``cuda[:N]``)."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends: not ONNX
            raise ManifestError(f"runtime: {path} is not a readable ONNX model "
                                f"({first_line(e)})") from None
        spec = agreed_spec(path, spec, spec_from_onnx(proto, path))
        if spec is None:
            raise ManifestError(f"runtime: {path} carries no segcompress spec and no "
                                "manifest.json lists it: export it with compress export")
        model_precision = onnx_precision(proto)
        if precision is not None and precision != model_precision:
            raise InputError(f"runtime: {path.name} is a {model_precision} model; ONNX Runtime "
                             f"runs it as stored and cannot force {precision}")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    f"runtime: onnxruntime has no CUDA execution provider here (available: "
                    f"{', '.join(ort.get_available_providers())}): {INSTALL_GPU}")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        elif device != "cpu":
            raise InputError(f"runtime: ONNX Runtime runs on cpu or cuda[:N], not {device!r}")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT's own error types (Fail, InvalidGraph...)
            raise ManifestError(f"runtime: ONNX Runtime cannot load {path}: "
                                f"{one_line(e, limit=MESSAGE_CHARS)}") from None
        used = self.session.get_providers()
        if device.startswith("cuda") and used[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(f"runtime: onnxruntime could not start the CUDA provider "
                                     f"for {path.name} (got {used[0]})")
        inp = self.session.get_inputs()[0]
        out_shape = self.session.get_outputs()[0].shape
        self.graph_outputs = [o.name for o in self.session.get_outputs()]
        check_shapes(path, spec, list(inp.shape), list(out_shape), self.graph_outputs)
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        super().__init__(path, spec, device, model_precision,
                         {"providers": used, "input_shape": list(inp.shape)})

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = self.output_names
        # a single-output graph's one output whatever its name; a multi-task graph's by name
        fetch = names if len(names) > 1 else [self.graph_outputs[0]]

        def run(x):
            try:
                return dict(zip(names, self.session.run(fetch, {self.input_name: x})))
            except Exception as e:  # noqa: BLE001 - ORT's own error types, one line
                raise DeployError(f"runtime: ONNX Runtime failed on {self.path} with input "
                                  f"{list(x.shape)}: {one_line(e, limit=MESSAGE_CHARS)}") from None

        return in_batches(run, images, self.fixed_batch)


def available(device: str) -> str | None:
    """Why ONNX Runtime cannot run on ``device`` here (not installed, no GPU, no CUDA
    execution provider), or None."""
    why = cuda_missing(LABEL, device)
    if why:
        return why
    if importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime: not installed (pip install onnxruntime)"
    if str(device).startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "ONNX Runtime: no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> OnnxRuntime:
    """Without a manifest the spec comes from the file's own metadata."""
    return OnnxRuntime(path, spec, device, threads, precision)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("f32", "fp16", "int8"),
                  devices=("cpu", "cuda"), libraries=("onnxruntime",), available=available,
                  load=load, role="source", packages=("onnxruntime", "onnxruntime-gpu"),
                  builds=("f32", "int8"), companions=external_data_files,
                  title="ONNX Runtime")
