"""One ``Runtime`` per backend, all with the same ``predict``.

``load_runtime(path)`` picks the backend from the file suffix: ``.pt``/``.pth`` PyTorch,
``.onnx`` ONNX Runtime (CPU or CUDA provider), ``.xml`` OpenVINO, ``.engine``/``.plan``
TensorRT. When a ``manifest.json`` sits beside the file and lists it, the file (and its
companions) must match their sha256 or nothing is loaded, and the spec comes from the
manifest; otherwise from the file itself (checkpoint spec, ONNX metadata, OpenVINO
rt_info).

``Runtime.precision`` is what really executes, read back from the backend where it can
tell: OpenVINO on a CPU with bf16 support runs f32 models in bf16 unless told otherwise
(``precision="f32"``), and this shows here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.errors import BackendUnavailable, DeployError, ManifestError
from deploy.manifest import artifact_spec, find_artifact
from deploy.metadata import spec_from_onnx
from deploy.openvino import compile_openvino, spec_from_openvino
from deploy.tensorrt import TensorRTEngine

PRECISIONS = {"f32": "f32", "fp32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16",
              "fp16": "fp16", "f16": "fp16", "float16": "fp16", "int8": "int8", "i8": "int8"}
INSTALL_GPU = "pip install 'segcompress[gpu]'"


def normalize_precision(precision: str | None) -> str | None:
    """Canonical precision name (``f32``, ``bf16``, ``fp16``, ``int8``) or None."""
    if precision is None:
        return None
    key = str(precision).lower()
    if key not in PRECISIONS:
        raise InputError(f"runtime: unknown precision {precision!r}; valid: f32, bf16, fp16, int8")
    return PRECISIONS[key]


class Runtime:
    """A loaded model: ``predict(images) -> logits`` (or class ids).

    Attributes:
        path: the file loaded.
        spec: the model spec; ``spec.output`` is ``"logits"`` or ``"argmax"``.
        backend: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``.
        precision: what really executes (``f32``, ``bf16``, ``fp16``, ``int8``).
        device: where it runs (``cpu``, ``cuda``, ``CPU``...).
        info: backend details (provider, per-layer precisions, GPU name...).
    """

    backend = "none"

    def __init__(self, path: Path, spec: ModelSpec, device: str, precision: str,
                 info: dict[str, Any] | None = None) -> None:
        self.path, self.spec, self.device, self.precision = path, spec, device, precision
        self.info = info or {}

    @property
    def output(self) -> str:
        return self.spec.output or "logits"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, 3, H, W]`` normalised -> ``float32 [N, C, H, W]`` logits, or
        ``int64 [N, H, W]`` class ids when ``spec.output == "argmax"``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"runtime: images must be float32 [N, 3, H, W], got {images.shape}")
        out = self._predict(images)
        return out.astype(np.int64) if self.output == "argmax" else out.astype(np.float32)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def device_call(self) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], Any]] | None:
        """``(upload, forward)`` for timing device compute alone on a GPU: ``upload(images)``
        puts a batch on the device once, ``forward(batch)`` enqueues the model on it and
        returns the output left on the device (no host copies). None where the backend has
        no such split (CPU runtimes, ONNX Runtime)."""
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path.name}, backend={self.backend}, "
                f"precision={self.precision}, device={self.device})")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def _check_shapes(path: Path, spec: ModelSpec, in_shape: list, out_shape: list) -> None:
    """Refuse a model file whose own graph contradicts its spec: another class count, or
    a fixed input size other than the spec's (it would score or time the wrong thing)."""
    if (spec.output or "logits") == "logits" and len(out_shape) == 4:
        c = out_shape[1]
        if isinstance(c, int) and c != spec.classes:
            raise ManifestError(f"runtime: {path} outputs {c} classes but its spec says "
                                f"{spec.classes}: refusing it")
    if len(in_shape) != 4 or (isinstance(in_shape[1], int) and in_shape[1] != 3):
        raise ManifestError(f"runtime: {path} takes input {in_shape}; expected [N, 3, H, W] "
                            "(NCHW, RGB)")
    hw = in_shape[2:]
    want = list(spec.input_size)
    if all(isinstance(v, int) for v in hw) and hw != want:
        raise ManifestError(f"runtime: {path} has a fixed input size {hw[0]}x{hw[1]} but its "
                            f"spec says {want[0]}x{want[1]}: refusing it")


# ---------------------------------------------------------------- torch


class TorchRuntime(Runtime):
    """A segcompress checkpoint in PyTorch (f32)."""

    backend = "torch"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None) -> None:
        import torch

        from compress.models import load_model

        if precision not in (None, "f32"):
            raise InputError(f"runtime: {path.name}: the torch runtime runs f32 only, not "
                             f"{precision}; export it (compress export) for other precisions")
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model setting
        self._torch = torch
        self.model, spec = load_model(path, device=device, return_spec=True)
        super().__init__(path, replace(spec, output="logits"), str(device), "f32")

    def _predict(self, images: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            x = self._torch.from_numpy(images).to(self.device)
            return self.model(x).float().cpu().numpy()

    def device_call(self):
        if not str(self.device).startswith("cuda"):
            return None
        torch = self._torch

        def upload(images: np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)

        def forward(x):
            with torch.no_grad():
                return self.model(x)

        return upload, forward


# ---------------------------------------------------------------- onnxruntime


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

    backend = "onnxruntime"

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends: not ONNX
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ManifestError(f"runtime: {path} is not a readable ONNX model ({msg})") from None
        spec = spec or spec_from_onnx(proto, path)
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
                                f"{_first_line(e)}") from None
        used = self.session.get_providers()
        if device.startswith("cuda") and used[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(f"runtime: onnxruntime could not start the CUDA provider "
                                     f"for {path.name} (got {used[0]})")
        inp = self.session.get_inputs()[0]
        out_shape = self.session.get_outputs()[0].shape
        _check_shapes(path, spec, list(inp.shape), list(out_shape))
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        super().__init__(path, spec, device, model_precision,
                         {"providers": used, "input_shape": list(inp.shape)})

    def _predict(self, images: np.ndarray) -> np.ndarray:
        def run(x):
            try:
                return self.session.run(None, {self.input_name: x})[0]
            except Exception as e:  # noqa: BLE001 - ORT's own error types, one line
                raise DeployError(f"runtime: ONNX Runtime failed on {self.path} with input "
                                   f"{list(x.shape)}: {_first_line(e)}") from None

        return in_batches(run, images, self.fixed_batch)


# ---------------------------------------------------------------- openvino


class OpenVINORuntime(Runtime):
    """An OpenVINO IR (``.xml`` + ``.bin``) on ``cpu`` (default), ``gpu`` or ``npu``."""

    backend = "openvino"

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None) -> None:
        compiled, model, info = compile_openvino(path, device=device, threads=threads,
                                                 precision=precision)
        spec = spec or spec_from_openvino(model, path)
        if spec is None:
            raise ManifestError(f"runtime: {path} carries no segcompress spec and no "
                                "manifest.json lists it: export it with compress export")
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        out = model.outputs[0].get_partial_shape()
        _check_shapes(path, spec, [d.get_length() if d.is_static else None for d in shape],
                      [d.get_length() if d.is_static else None for d in out])
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(path, spec, device, info["precision"], info)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        def run(x):
            try:
                self.request.infer({0: x})
            except Exception as e:  # noqa: BLE001 - OpenVINO's own error types, one line
                raise DeployError(f"runtime: OpenVINO failed on {self.path} with input "
                                   f"{list(x.shape)}: {_first_line(e)}") from None
            return self.request.get_output_tensor(0).data.copy()

        return in_batches(run, images, self.fixed_batch)


# ---------------------------------------------------------------- tensorrt


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine on an NVIDIA GPU (``device`` ``cuda[:N]``)."""

    backend = "tensorrt"

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cuda",
                 threads: int | None = None, precision: str | None = None,
                 entry: dict | None = None) -> None:
        if spec is None:
            raise ManifestError(f"runtime: {path} is a TensorRT engine without a manifest.json "
                                "beside it that lists it: the spec is unknown")
        device = "cuda" if device in ("cpu", "gpu") else device
        self.engine = TensorRTEngine(path, device=device)
        built = (entry or {}).get("precision")
        if precision is not None and built is not None and precision != built:
            raise InputError(f"runtime: {path.name} was built for {built}; a TensorRT engine "
                             f"runs as built and cannot switch to {precision}")
        super().__init__(path, spec, device, built or "unknown", self.engine.info)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        return self.engine.run(images)

    def device_call(self):
        return self.engine.upload, self.engine.enqueue


# ---------------------------------------------------------------- loading


SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".xml": "openvino",
            ".engine": "tensorrt", ".plan": "tensorrt"}


def load_runtime(path: str | Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None) -> Runtime:
    """Load a checkpoint or exported artifact for inference.

    Args:
        path: ``.pt``/``.pth``, ``.onnx``, ``.xml`` (OpenVINO IR) or ``.engine``/``.plan``.
        device: ``cpu`` or ``cuda[:N]`` (``gpu``/``npu`` for OpenVINO); TensorRT always
            runs on CUDA.
        threads: intra-op threads (ONNX Runtime, OpenVINO; process-wide for torch).
        precision: force an execution precision where the backend can choose it
            (OpenVINO: ``f32``, ``bf16``, ``fp16``); elsewhere it must match the file.

    Returns:
        A :class:`Runtime`.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: a ``manifest.json`` beside the file is broken, or the file does not
            match its sha256 there; or no spec can be found.
        BackendUnavailable: the backend or its device is missing (with the install hint).
        ValueError: unknown suffix, device or precision.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"runtime: {path} not found")
    backend = SUFFIXES.get(path.suffix.lower())
    if backend is None:
        raise InputError(f"runtime: cannot tell the backend of {path.name}; suffixes: "
                         f"{', '.join(SUFFIXES)}")
    precision = normalize_precision(precision)

    manifest, entry = find_artifact(path)
    spec = artifact_spec(manifest, entry) if entry is not None else None
    device = str(device)
    if backend == "torch":
        return TorchRuntime(path, device, threads, precision)
    if backend == "onnxruntime":
        return OnnxRuntime(path, spec, device, threads, precision)
    if backend == "openvino":
        return OpenVINORuntime(path, spec, device, threads, precision)
    return TensorRTRuntime(path, spec, device, threads, precision, entry)



def load_predictor(path: Path, device: str = "cpu", spec: ModelSpec | None = None):
    """``compress eval``'s loader for any file :func:`load_runtime` takes: a checkpoint
    as the eval-mode PyTorch model (``compress.evaluate.load_predictor``), an exported
    artifact as a ``predict(images: torch.Tensor) -> logits`` over its runtime; class ids
    from an argmax export come back one-hot (a logit of +-1 for a binary model), so
    ``argmax(1)`` gives them. Returns ``(predict, spec)``."""
    import torch

    from compress.evaluate import load_predictor as load_checkpoint

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return load_checkpoint(path, device, spec)
    rt = load_runtime(path, device=device)

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = rt.predict(x.cpu().numpy())
        if out.ndim == 3 and rt.spec.classes == 1:  # binary ids -> a logit of +-1
            out = out[:, None] * 2.0 - 1.0
        elif out.ndim == 3:  # class ids from an argmax export: one-hot, argmax(1) gives them
            out = np.eye(rt.spec.classes, dtype=np.float32)[out].transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    return predict, rt.spec
