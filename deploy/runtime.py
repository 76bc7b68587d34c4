"""The backend registry and the one loader: ``load_runtime(path)`` for any model file.

Each backend lives in its own module under :mod:`deploy.backends` and describes itself
with a :class:`~deploy.backends.base.Backend` (file suffixes, precisions, devices,
``available(device)``, its loader); this module holds the registry of them and is what
callers ask (``backend_for_path``, ``get_backend``, ``backends``, ``names``, ``packages``,
``checkpoint_backend``, ``source_backend``) instead of keeping their own suffix, device,
precision or package rules: a new backend is one module plus one line in
:data:`_REGISTRY`. ``.pt``/``.pth`` load in PyTorch, ``.onnx`` in ONNX Runtime
(CPU or CUDA provider), ``.xml`` in OpenVINO, ``.engine``/``.plan`` in TensorRT, ``.pt2``
in AOTInductor (only as listed by its manifest: it holds native code), ``.pte`` in
ExecuTorch and ``.tflite`` in LiteRT (each beside its manifest: they carry no spec). When a
``manifest.json`` sits beside the file and lists it, the file (and its companions) must
match their sha256 or nothing is loaded, and the spec comes from the manifest; otherwise
from the file itself (checkpoint spec, ONNX metadata, OpenVINO rt_info).

``Runtime.precision`` is what really executes, read back from the backend where it can
tell: OpenVINO on a CPU with bf16 support runs f32 models in bf16 unless told otherwise
(``precision="f32"``), and this shows here.

The batching helper every fixed-batch runtime uses is :func:`deploy.arrays.in_batches`
(re-exported here as :func:`in_batches`).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.backends import aoti as aoti_backend
from deploy.backends import executorch as executorch_backend
from deploy.backends import litert as litert_backend
from deploy.backends import onnxruntime as onnxruntime_backend
from deploy.backends import openvino as openvino_backend
from deploy.backends import tensorrt as tensorrt_backend
from deploy.backends import torch as torch_backend
from deploy.backends.base import (
    PRECISION_ALIASES,
    PRECISIONS,
    Backend,
    Runtime,
    canonical_precision,
    normalize_precision,
)
from deploy.manifest import artifact_spec, find_artifact

log = logging.getLogger("deploy")

__all__ = [
    "PRECISIONS",
    "PRECISION_ALIASES",
    "SUFFIXES",
    "Backend",
    "Runtime",
    "backend_for_path",
    "backends",
    "canonical_precision",
    "checkpoint_backend",
    "get_backend",
    "import_libraries",
    "in_batches",
    "load_predictor",
    "load_runtime",
    "names",
    "normalize_precision",
    "packages",
    "source_backend",
]

# the registry: every backend, in the order tables list them
_REGISTRY: dict[str, Backend] = {b.name: b for b in (
    torch_backend.BACKEND, onnxruntime_backend.BACKEND, openvino_backend.BACKEND,
    tensorrt_backend.BACKEND, aoti_backend.BACKEND, executorch_backend.BACKEND,
    litert_backend.BACKEND)}
# the one suffix -> backend table, built from the backends' own suffixes
SUFFIXES: dict[str, str] = {s: b.name for b in _REGISTRY.values() for s in b.suffixes}


def backends() -> list[Backend]:
    """Every registered backend: torch, onnxruntime, openvino, tensorrt, aoti, executorch,
    litert."""
    return list(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The registered backends' names, in :func:`backends` order."""
    return tuple(_REGISTRY)


def packages() -> tuple[str, ...]:
    """The distribution names of every backend's packages (``torch``, ``onnxruntime``,
    ``onnxruntime-gpu``...), whose versions timing reports record."""
    return tuple(dict.fromkeys(p for b in _REGISTRY.values() for p in b.packages))


def _with_role(role: str) -> Backend:
    return next(b for b in _REGISTRY.values() if b.role == role)


def checkpoint_backend() -> Backend:
    """The backend of training checkpoints (what teachers and exports start from)."""
    return _with_role("checkpoint")


def source_backend() -> Backend:
    """The backend of the ONNX file every other artifact is converted from."""
    return _with_role("source")


def get_backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        InputError: an unknown name (the valid ones listed).
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown backend {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def backend_for_path(path: str | Path) -> Backend:
    """The backend that loads ``path``, from its suffix.

    Raises:
        InputError: a suffix no backend loads (the known ones listed).
    """
    name = SUFFIXES.get(Path(path).suffix.lower())
    if name is None:
        raise InputError(f"runtime: cannot tell the backend of {Path(path).name}; suffixes: "
                         f"{', '.join(SUFFIXES)}")
    return _REGISTRY[name]


def import_libraries(names: set[str] | list[str], device: str) -> None:
    """Import the libraries of the named backends that can run on ``device`` here, so the
    first model's load (and its memory figure) does not pay for them."""
    for b in map(get_backend, sorted(names)):
        if b.available(device):
            continue
        for module in b.libraries:
            try:
                importlib.import_module(module)
            except ImportError:  # loading the model will say what is missing
                pass


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
    backend = backend_for_path(path)
    precision = normalize_precision(precision)
    manifest, entry = find_artifact(path)
    if manifest is not None and entry is None:  # not verified: never passed off as if it were
        log.warning(f"warning: {path} is not listed in the manifest.json beside it: it is "
                    "unverified (no sha256, no verification); loading it with its own spec")
    spec = artifact_spec(manifest, entry) if entry is not None else None
    return backend.load(path, spec, entry, str(device), threads, precision)


def load_predictor(path: Path, device: str = "cpu", spec: ModelSpec | None = None):
    """``compress eval``'s loader for any file :func:`load_runtime` takes: a checkpoint
    as the eval-mode PyTorch model (``compress.evaluate.checkpoint_predictor``), an exported
    artifact as a ``predict(images: torch.Tensor) -> logits`` over its runtime; class ids
    from an argmax export come back one-hot (a logit of +-1 for a binary model), so
    ``argmax(1)`` gives them. A multi-task artifact's predict returns what its checkpoint's
    model returns: ``{"seg": logits, "depth": [N, H, W], ...}`` (``compress.multitask.
    seg_logits`` reads either). Returns ``(predict, spec)``."""
    import torch

    from compress.evaluate import checkpoint_predictor

    path = Path(path)
    if path.suffix in torch_backend.SUFFIXES or path.is_dir():  # a transformers folder too
        return checkpoint_predictor(path, device, spec)
    rt = load_runtime(path, device=device)
    if rt.spec.frame_size is not None:
        raise InputError(f"eval: {path.name} is a frame-to-map graph (camera frames in, class "
                         "map out): its export scored it on the split's frames (manifest.json "
                         "beside it); score the model-only file of the same export here")

    def as_logits(out: np.ndarray) -> torch.Tensor:
        if out.ndim == 3 and rt.spec.classes == 1:  # binary ids -> a logit of +-1
            out = out[:, None] * 2.0 - 1.0
        elif out.ndim == 3:  # class ids from an argmax export: one-hot, argmax(1) gives them
            out = np.eye(rt.spec.classes, dtype=np.float32)[out].transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def predict(x: torch.Tensor) -> torch.Tensor:
        return as_logits(rt.predict(x.cpu().numpy()))

    def predict_all(x: torch.Tensor) -> dict[str, torch.Tensor]:
        (seg_name, seg), *rest = rt.run_outputs(x.cpu().numpy()).items()
        return {seg_name: as_logits(seg), **{n: torch.from_numpy(v) for n, v in rest}}

    return (predict_all if len(rt.output_names) > 1 else predict), rt.spec
