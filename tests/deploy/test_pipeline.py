"""The whole export: INT8 via NNCF on ONNX Runtime and OpenVINO, the manifest, clean failure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from compress.spec import ModelSpec
from deploy.errors import DeployError, ExportError, ManifestError, QuantizationError
from deploy.manifest import read_manifest, sha256_file
from deploy.pipeline import ExportConfig, export_checkpoint
from deploy.runtime import load_runtime
from tests.deploy.conftest import synthetic_batches

INT8_AGREEMENT_FLOOR = 0.95  # measured about 0.99 on the probed tiny model


@pytest.fixture(scope="module")
def export_dir(trained_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "full"
    cfg = ExportConfig(int8=True, openvino=True, val_size=8, calib_size=16, max_drop=5.0,
                       synthetic_val_length=8)
    export_checkpoint(trained_ckpt, out, cfg)
    return out


def test_manifest_describes_every_artifact(export_dir, trained_ckpt):
    m = read_manifest(export_dir)
    assert m["source_sha256"] == sha256_file(trained_ckpt)
    files = {a["file"]: a for a in m["artifacts"]}
    assert set(files) == {"model.onnx", "model_int8.onnx", "model.xml", "model_int8.xml"}
    for a in m["artifacts"]:
        assert a["sha256"] == sha256_file(export_dir / a["file"])
        assert a["input_shape"] == ["batch", 3, 64, 64] and a["input_dtype"] == "float32"
        assert a["normalization"]["mean"] == m["spec"]["mean"]
        assert a["class_names"] == m["spec"]["class_names"] and a["ignore_index"] == 255
        assert 0 <= a["verification"]["agreement"] <= 1
        assert a["verification"]["miou"] is not None
    assert files["model.onnx"]["verification"]["agreement"] >= 0.999
    assert files["model.xml"]["files"][0]["file"] == "model.bin"
    q = files["model_int8.onnx"]["quantization"]
    assert q["method"] == "nncf.quantize" and q["calibration_split"] == "train"
    assert q["preset"] == "mixed" and q["quantized_layers"] > 0
    assert m["data"]["calibration"]["split"] == "train" and m["data"]["verification"]["split"] == "val"
    assert not list(export_dir.parent.glob(".full.*"))  # no temp dir left behind


def test_int8_runs_on_onnxruntime_and_openvino(export_dir):
    m = read_manifest(export_dir)
    files = {a["file"]: a for a in m["artifacts"]}
    images = synthetic_batches(ModelSpec.from_dict(m["spec"]), "val", n=4)[0][0]
    fp32 = load_runtime(export_dir / "model.onnx").predict(images).argmax(1)
    for name in ("model_int8.onnx", "model_int8.xml"):
        rt = load_runtime(export_dir / name)
        assert rt.precision == "int8", name
        assert (rt.predict(images).argmax(1) == fp32).mean() >= INT8_AGREEMENT_FLOOR, name
        assert files[name]["verification"]["agreement"] >= INT8_AGREEMENT_FLOOR, name
    ov8 = load_runtime(export_dir / "model_int8.xml")
    assert any(p in ("i8", "u8") for v in ov8.info["layer_precisions"].values() for p in v)


def test_openvino_reports_the_precision_it_ran(export_dir):
    default = load_runtime(export_dir / "model.xml")
    forced = load_runtime(export_dir / "model.xml", precision="f32")
    assert forced.precision == "f32"
    assert default.precision in ("f32", "bf16", "fp16")  # bf16 on CPUs with bf16 units
    assert default.precision == default.info["inference_precision_hint"]
    m = read_manifest(export_dir)
    xml = next(a for a in m["artifacts"] if a["file"] == "model.xml")
    assert xml["verification"]["precision_default_here"] == default.precision
    images = synthetic_batches(ModelSpec.from_dict(m["spec"]), "val", n=2)[0][0]
    ref = load_runtime(export_dir / "model.onnx").predict(images)
    np.testing.assert_allclose(forced.predict(images), ref, atol=1e-3)
    with pytest.raises(ValueError, match="cannot force bf16"):
        load_runtime(export_dir / "model.onnx", precision="bf16")


def test_hash_mismatch_and_broken_manifest_are_refused(export_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(export_dir, d)
    with open(d / "model_int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"model_int8.onnx does not match its sha256"):
        load_runtime(d / "model_int8.onnx")
    (d / "model.bin").write_bytes((d / "model.bin").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ManifestError, match=r"model.bin does not match"):
        load_runtime(d / "model.xml")
    load_runtime(d / "model.onnx")  # untouched files still load
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="broken"):
        load_runtime(d / "model.onnx")
    m = json.loads((export_dir / "manifest.json").read_text())
    del m["artifacts"][0]["sha256"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="missing sha256"):
        load_runtime(d / "model.onnx")


def test_failed_step_leaves_nothing(trained_ckpt, tmp_path, monkeypatch):
    import deploy.backends.openvino

    def broken(*a, **k):
        raise DeployError("openvino: converting model.onnx failed: simulated")

    monkeypatch.setattr(deploy.backends.openvino, "convert_to_openvino", broken)
    out = tmp_path / "exp"
    with pytest.raises(DeployError, match="simulated"):
        export_checkpoint(trained_ckpt, out, ExportConfig(openvino=True, val_size=2,
                                                          synthetic_val_length=2))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_budget_that_cannot_be_met_fails_clearly(trained_ckpt, tmp_path):
    out = tmp_path / "exp"
    cfg = ExportConfig(int8=True, val_size=4, calib_size=8, synthetic_val_length=4,
                       max_drop=-100.0, accuracy_control=False)
    with pytest.raises(QuantizationError, match=r"INT8 mIoU drop .* exceeds --max-drop -100"):
        export_checkpoint(trained_ckpt, out, cfg)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # NNCF ranks every quantizer group: ~15 s idle, a minute on a busy CPU
def test_accuracy_control_returns_layers_to_float_then_reports(trained_ckpt, tmp_path):
    out = tmp_path / "exp"
    cfg = ExportConfig(int8=True, val_size=4, calib_size=8, synthetic_val_length=4,
                       max_drop=-100.0, max_float_layers=1)
    with pytest.raises(QuantizationError, match=r"still exceeds --max-drop .* 1 layer\(s\) kept"):
        export_checkpoint(trained_ckpt, out, cfg)
    assert not out.exists()


def test_bad_options_stop_before_any_work(trained_ckpt, tmp_path, monkeypatch):
    import deploy.backends.tensorrt

    with pytest.raises(ValueError, match="calibrate on the training split"):
        export_checkpoint(trained_ckpt, tmp_path / "a", ExportConfig(int8=True, calib_split="val"))
    # as on a GPU
    monkeypatch.setattr(deploy.backends.tensorrt, "check_tensorrt", lambda what: None)
    with pytest.raises(ValueError, match="TensorRT INT8 needs symmetric"):
        export_checkpoint(trained_ckpt, tmp_path / "a",
                          ExportConfig(int8=True, preset="mixed", trt=True))
    assert not (tmp_path / "a").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(trained_ckpt, full, ExportConfig())
    assert (full / "x").read_text() == "keep"


def test_int8_from_a_folder_of_unlabelled_images(trained_ckpt, tmp_path):
    """``--calib-images``: no labels anywhere; the budget is checked against the f32 model's
    own predictions on the images held back from calibration, and the manifest says so."""
    from PIL import Image

    from compress.data.transforms import denormalize
    from deploy.manifest import read_manifest
    from tests.deploy.conftest import synthetic_batches, tiny_spec

    spec = tiny_spec()
    folder = tmp_path / "frames"
    folder.mkdir()
    images = np.concatenate([b[0] for b in synthetic_batches(spec, "train", n=12)])
    for i, x in enumerate(images):  # camera frames: plain RGB files, larger than the input
        Image.fromarray(denormalize(x, spec.mean, spec.std)).resize((96, 80)).save(
            folder / f"frame_{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "exp"
    export_checkpoint(trained_ckpt, out, ExportConfig(int8=True, calib_images=folder,
                                                      holdout_every=4, max_drop=50.0))
    m = read_manifest(out)
    q = next(a for a in m["artifacts"] if a["file"] == "model_int8.onnx")
    assert q["quantization"]["budget"] == "fp32-predictions"
    assert q["quantization"]["calibration_images"] == 9  # 12 minus every 4th
    assert q["quantization"]["calibration_images_dir"] == str(folder)
    v = q["verification"]
    assert v["images"] == 3 and v["miou_f32"] == pytest.approx(1.0)  # f32 vs its own output
    assert 0.5 < v["agreement"] <= 1 and 0 < v["miou"] <= 1
    assert m["data"]["verification"]["kind"] == "images"
    assert m["data"]["verification"]["held_back"] == 3
