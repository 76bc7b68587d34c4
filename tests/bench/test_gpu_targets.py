"""What ``bench gpu-check`` times (runs on a GPU only; its target list is checked here):
the AOTInductor CUDA row comes from a package the export compiled for CUDA, and without one
the row says how to build it."""

from __future__ import annotations

from bench.gpu import _targets
from compress.models import read_checkpoint
from deploy.manifest import artifact_entry, read_manifest, write_manifest


def test_the_aoti_cuda_row_is_timed_only_from_a_package_built_for_cuda(checkpoints, export_dir,
                                                                      tmp_path):
    student = checkpoints[1]
    targets, missing = _targets(student, export_dir)
    assert [t.backend for t in targets] == ["torch", "onnxruntime", "tensorrt"]
    row = next(m for m in missing if m["label"] == "AOTInductor CUDA")
    assert "--aoti --aoti-device cuda" in row["error"]
    # an export holding a .pt2 compiled for the CPU: still not a CUDA row
    for device, timed in (("cpu", False), ("cuda", True)):
        folder = tmp_path / device
        folder.mkdir()
        manifest = read_manifest(export_dir)
        for art in manifest["artifacts"]:
            (folder / art["file"]).write_bytes((export_dir / art["file"]).read_bytes())
        (folder / "model.pt2").write_bytes(b"a package")
        spec = read_checkpoint(student)["spec"]
        manifest["artifacts"].append(artifact_entry(
            folder / "model.pt2", backend="aoti", precision="f32", input_name="images",
            input_shape=["batch", 3, *spec.input_size], output="logits", output_name="logits",
            spec=spec, aoti={"device": device}))
        manifest.pop("manifest_sha256", None)
        write_manifest(folder, manifest)
        targets, missing = _targets(student, folder)
        labels = [t.label for t in targets]
        assert ("AOTInductor CUDA" in labels) is timed
        assert any(m["label"] == "AOTInductor CUDA" for m in missing) is not timed
