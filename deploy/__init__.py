"""deploy: export, quantize, and run segmentation students on ONNX Runtime, OpenVINO, TensorRT.

Public API::

    from deploy import ExportConfig, export_checkpoint, load_runtime
    export_checkpoint("best.pt", "export/", ExportConfig(int8=True, data=Path("camvid")))
    rt = load_runtime("export/model_int8.onnx")   # checked against manifest.json
    logits = rt.predict(images)                   # float32 [N, 3, H, W] -> [N, C, H, W]

Each backend (torch, onnxruntime, openvino, tensorrt) is one module under
``deploy/backends/``; ``deploy.runtime`` is their registry (``backend_for_path``,
``get_backend``, ``backends``). Heavy packages (onnxruntime, openvino, nncf, tensorrt) are
imported by the functions that need them, so ``import deploy`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from deploy.errors import (
    BackendUnavailable,
    DeployError,
    ExportError,
    ManifestError,
    QuantizationError,
    VerificationError,
)

_LAZY = {
    "ExportConfig": "deploy.pipeline",
    "export_checkpoint": "deploy.pipeline",
    "export_onnx": "deploy.export",
    "verify_onnx": "deploy.export",
    "compare": "deploy.export",
    "quantize_int8": "deploy.quantize",
    "quantize_int8_with_accuracy_control": "deploy.quantize",
    "convert_to_openvino": "deploy.backends.openvino",
    "compile_openvino": "deploy.backends.openvino",
    "build_engine": "deploy.backends.tensorrt",
    "check_tensorrt": "deploy.backends.tensorrt",
    "read_manifest": "deploy.manifest",
    "write_manifest": "deploy.manifest",
    "sha256_file": "deploy.manifest",
    "Runtime": "deploy.runtime",
    "load_runtime": "deploy.runtime",
    "backend_for_path": "deploy.runtime",
    "get_backend": "deploy.runtime",
    "normalize_precision": "deploy.runtime",
    "validate_config": "deploy.pipeline",
}

__all__ = [
    "BackendUnavailable",
    "DeployError",
    "ExportConfig",
    "ExportError",
    "ManifestError",
    "QuantizationError",
    "Runtime",
    "VerificationError",
    "backend_for_path",
    "build_engine",
    "check_tensorrt",
    "compare",
    "compile_openvino",
    "convert_to_openvino",
    "export_checkpoint",
    "export_onnx",
    "get_backend",
    "load_runtime",
    "normalize_precision",
    "quantize_int8",
    "quantize_int8_with_accuracy_control",
    "read_manifest",
    "sha256_file",
    "validate_config",
    "verify_onnx",
    "write_manifest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
