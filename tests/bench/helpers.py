"""Tiny checkpoints and a tiny export dir for the bench tests and benchmarks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from compress.models import create_model, save_checkpoint
from tests.conftest import tiny_spec

SIZE = (64, 64)


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    """A 'teacher' (wider decoder) and a 'student' checkpoint, random weights."""
    torch.manual_seed(0)
    out = []
    for name, dec in (("teacher", (32, 16, 16, 8, 8)), ("student", (16, 16, 8, 8, 8))):
        spec = tiny_spec(decoder_channels=list(dec), synthetic_names=True)
        out.append(save_checkpoint(root / f"{name}.pt", create_model(spec), spec, epoch=0))
    return out[0], out[1]


def export_onnx(checkpoint: Path, path: Path) -> Path:
    from compress.models import load_model

    model = load_model(checkpoint)
    torch.onnx.export(
        model,
        torch.randn(1, 3, *SIZE),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
    )
    return path


def make_export_dir(
    root: Path, checkpoint: Path, with_engine: bool = True, openvino: bool = False
) -> Path:
    """An export dir written with deploy's own manifest writer (``new_manifest``,
    ``artifact_entry``, ``write_manifest``): an FP32 ONNX, optionally its OpenVINO IR, and
    (optionally) a TensorRT 'engine' that is only bytes, so its row must say it could not
    run."""
    from compress.models import read_checkpoint
    from deploy.manifest import artifact_entry, new_manifest, sha256_file, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    spec = read_checkpoint(checkpoint)["spec"]
    onnx_path = export_onnx(checkpoint, root / "model.onnx")
    entries = [("model.onnx", "onnxruntime", "f32", [])]
    if openvino:
        import openvino as ov

        ov.save_model(
            ov.convert_model(str(onnx_path)), str(root / "model.xml"), compress_to_fp16=False
        )
        entries.append(("model.xml", "openvino", "f32", [root / "model.bin"]))
    if with_engine:
        (root / "model_fp16.engine").write_bytes(b"not a real engine")
        entries.append(("model_fp16.engine", "tensorrt", "fp16", []))
    manifest = new_manifest(checkpoint, sha256_file(checkpoint), replace(spec, output="logits"), {}, {})
    for f, backend, precision, companions in entries:
        manifest["artifacts"].append(artifact_entry(
            root / f, backend=backend, precision=precision, input_name="images",
            input_shape=["batch", 3, *SIZE], output="logits", output_name="logits",
            spec=spec, companions=companions))
    assert onnx_path.is_file()
    write_manifest(root, manifest)  # with its own digest, as an export writes it
    return root
