"""The frame-to-map graph (issue 24): ``compress export --e2e HxW`` writes graphs that take
camera frames (uint8 NHWC) and give the class map at the frame size; each is the Python
pipeline (resize, normalise, model, argmax, resize back) in one file, verified on the
split's frames, and ``bench latency`` / ``bench report`` time it with nothing outside it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from compress.errors import InputError, ModelError
from compress.spec import ModelSpec
from deploy.arrays import nearest_indices
from deploy.backends.onnxruntime import OnnxRuntime
from deploy.e2e import frame_graph, frame_spec, parse_frame_size, python_pipeline
from deploy.metadata import set_spec_metadata
from deploy.runtime import load_predictor, load_runtime
from tests.deploy.conftest import run_export

runner = CliRunner()


def _spec(classes: int, size=(32, 48)) -> ModelSpec:
    return ModelSpec(arch="Unet", encoder="none", classes=classes,
                     class_names=[f"c{i}" for i in range(classes)], ignore_index=255,
                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                     input_size=list(size), output="logits")


def _channels_model(classes: int, spec: ModelSpec):
    """A model whose logits are its input's first ``classes`` channels (scaled): the class
    map is computable by hand from the pixels."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, *spec.input_size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                      ["batch", classes, *spec.input_size])
    nodes = [helper.make_node("Slice", ["images", "s", "e", "a"], ["part"]),
             helper.make_node("Mul", ["part", "k"], ["logits"])]
    inits = [helper.make_tensor("s", TensorProto.INT64, [1], [0]),
             helper.make_tensor("e", TensorProto.INT64, [1], [classes]),
             helper.make_tensor("a", TensorProto.INT64, [1], [1]),
             helper.make_tensor("k", TensorProto.FLOAT, [], [3.0])]
    graph = helper.make_graph(nodes, "channels", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    set_spec_metadata(model, spec)
    return model


def _by_hand(frames: np.ndarray, spec: ModelSpec, frame_hw) -> np.ndarray:
    """The expected class map: bilinear resize (half-pixel) to the model size, rounded,
    normalised, channel argmax (logit > 0 for one class), nearest resize back."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=tuple(spec.input_size), mode="bilinear", align_corners=False)
    x = (t.round().numpy() / 255 - np.reshape(spec.mean, (1, 3, 1, 1))) / \
        np.reshape(spec.std, (1, 3, 1, 1))
    logits = x[:, :spec.classes]
    ids = (logits[:, 0] > 0).astype(np.int64) if spec.classes == 1 else logits.argmax(1)
    h, w = spec.input_size
    return ids[:, nearest_indices(h, frame_hw[0])[:, None], nearest_indices(w, frame_hw[1])]


@pytest.mark.parametrize(("classes", "frame_hw"), [(3, (45, 70)), (1, (45, 70)), (3, (32, 48))])
def test_the_graph_gives_the_hand_computed_class_map(tmp_path, classes, frame_hw):
    spec = _spec(classes)
    path = tmp_path / "model_e2e.onnx"
    onnx.save(frame_graph(_channels_model(classes, spec), spec, frame_hw), str(path))
    rt = OnnxRuntime(path, None, threads=1)
    assert rt.spec.frame_size == list(frame_hw) and rt.spec.output == "argmax"
    frames = np.random.default_rng(classes).integers(0, 256, (2, *frame_hw, 3), dtype=np.uint8)
    sess = rt.session
    raw = sess.run(None, {"frames": frames})[0]
    assert raw.dtype == np.uint8 and raw.shape == (2, *frame_hw)
    want = _by_hand(frames, spec, frame_hw)
    assert (raw == want).mean() >= 0.999  # a rounding tie may flip a pixel value by one
    # and it is what the Python pipeline gives around the model-only graph
    model_only = tmp_path / "model.onnx"
    onnx.save(_channels_model(classes, spec), str(model_only))
    ref = python_pipeline(OnnxRuntime(model_only, None, threads=1).predict, spec, frame_hw)
    assert (rt.predict(frames) == ref(frames)).mean() >= 0.999


def test_a_frame_graph_takes_only_its_frames_and_says_so(tmp_path):
    spec = _spec(3)
    path = tmp_path / "model_e2e.onnx"
    onnx.save(frame_graph(_channels_model(3, spec), spec, (40, 60)), str(path))
    rt = OnnxRuntime(path, None, threads=1)
    for bad in (np.zeros((1, 3, 32, 48), np.float32), np.zeros((1, 40, 61, 3), np.uint8),
                np.zeros((1, 40, 60, 3), np.float32)):
        with pytest.raises(InputError, match=r"frame-to-map graph: it takes camera frames "
                                             r"uint8 \[N, 40, 60, 3\]") as e:
            rt.predict(bad)
        assert "\n" not in str(e.value)


def test_frame_size_is_a_typed_spec_field_that_needs_class_ids():
    spec = frame_spec(_spec(3), (360, 480))
    assert ModelSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["frame_size"] == [360, 480]
    assert "frame_size" not in _spec(3).to_dict()  # only when set
    with pytest.raises(ModelError, match="'output' must be 'argmax' where frame_size is set"):
        ModelSpec.from_dict({**spec.to_dict(), "output": "logits"}, "x.onnx")
    with pytest.raises(ModelError, match="x.onnx: model spec key 'frame_size'"):
        ModelSpec.from_dict({**spec.to_dict(), "frame_size": [0, 10]}, "x.onnx")
    assert parse_frame_size("360x480") == (360, 480)
    for bad in ("360", "axb", "0x480", "360x99999"):
        with pytest.raises(InputError, match="--e2e"):
            parse_frame_size(bad)


@pytest.mark.parametrize(("extra", "message"), [
    (["--e2e", "64"], "--e2e '64': expected HxW"),
    (["--e2e", "64x64", "--dynamic-spatial"], "--e2e resizes every frame to one model size"),
])
def test_what_e2e_cannot_do_is_refused_before_any_work(trained_ckpt, tmp_path, extra, message):
    res = run_export(trained_ckpt, tmp_path / "exp", *extra)
    assert res.exit_code != 0 and message in str(res.exception)
    assert "\n" not in str(res.exception)
    assert not (tmp_path / "exp").exists()


def test_export_e2e_verifies_every_form_and_bench_times_it_end_to_end(trained_ckpt, tmp_path):
    from bench.cli import app as bench_app

    out = tmp_path / "exp"
    res = run_export(trained_ckpt, out, "--e2e", "72x100", "--int8", "--openvino",
                  "--calib-size", "4", "--max-drop", "100")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    arts = {a["file"]: a for a in manifest["artifacts"]}
    frame_files = {"model_e2e.onnx", "model_e2e_int8.onnx", "model_e2e.xml",
                   "model_e2e_int8.xml"}
    assert frame_files <= set(arts)
    for name in frame_files:
        a = arts[name]
        assert a["frame_size"] == [72, 100] and a["input_dtype"] == "uint8"
        assert a["input_shape"] == ["batch", 72, 100, 3] and a["output"] == "argmax"
        assert a["normalization"]["in_graph"] is True and a["e2e"]["model_size"] == [64, 64]
        v = a["verification"]
        assert v["images"] == 4 and v["pixels"] == 4 * 72 * 100
        assert v["reference"].startswith("python pipeline around model")
        if a["precision"] == "f32":
            assert v["agreement"] >= 0.999
        assert 0 <= v["miou"] <= 1
        # companions come from the registry: the IR's weights file, none for an ONNX graph
        want = [name.replace(".xml", ".bin")] if name.endswith(".xml") else []
        assert [c["file"] for c in a["files"]] == want
    # the graph is the pipeline around the model-only file, on frames of its size
    frames = np.random.default_rng(0).integers(0, 256, (3, 72, 100, 3), dtype=np.uint8)
    e2e = load_runtime(out / "model_e2e.onnx", threads=1)
    ref = python_pipeline(load_runtime(out / "model.onnx", threads=1).predict,
                          load_runtime(out / "model.onnx").spec, (72, 100))
    assert (e2e.predict(frames) == ref(frames)).mean() >= 0.999
    with pytest.raises(InputError, match="frame-to-map graph"):  # compress eval's loader
        load_predictor(out / "model_e2e.onnx")
    timed = runner.invoke(bench_app, ["latency", str(out / "model_e2e_int8.xml"),
                                      str(out / "model.onnx"), "--threads", "1", "--runs", "3",
                                      "--warmup", "1", "--json", str(tmp_path / "t.json")])
    assert timed.exit_code == 0, timed.output
    rows = {r["label"]: r for r in json.loads((tmp_path / "t.json").read_text())["results"]}
    e2e_row = next(r for label, r in rows.items() if "model_e2e_int8.xml" in r["path"])
    onnx_row = next(r for label, r in rows.items() if r["path"].endswith("model.onnx"))
    assert e2e_row["frame_to_map"] is True and e2e_row["input_size"] == [72, 100]
    assert e2e_row["postprocess_ms"] is None and onnx_row["postprocess_ms"] is not None
    assert e2e_row["end_to_end_ms"]["median"] >= e2e_row["latency_ms"]["median"]
    # the report: every row's frame-to-map time beside its model time, the graph's row
    # timed alone and not re-scored on the report's resized images (its manifest's mIoU)
    rep_dir = tmp_path / "rep"
    rep = runner.invoke(bench_app, [
        "report", "--teacher", str(trained_ckpt), "--student", str(trained_ckpt),
        "--artifacts", str(out), "--data-kind", "synthetic", "--size", "64x64", "--runs", "3",
        "--warmup", "1", "--threads", "1", "--max-images", "2", "--device", "cpu",
        "--out", str(rep_dir), "-q"])
    assert rep.exit_code == 0, rep.output
    report = json.loads((rep_dir / "report.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    teacher = rows["teacher PyTorch f32"]
    graph = rows["student OpenVINO int8 frame→map"]
    assert graph["status"] == "ok" and graph["miou"] is None
    assert "frame-to-map graph (72x100 frames)" in graph["accuracy_note"]
    assert f"{arts['model_e2e_int8.xml']['verification']['miou'] * 100:.2f}" in \
        graph["accuracy_note"]
    for r in (graph, rows["student ONNX f32"]):
        assert r["speedup_frame_to_map"] == pytest.approx(
            teacher["end_to_end_ms"]["median"] / r["end_to_end_ms"]["median"])
    md = (rep_dir / "report.md").read_text()
    assert "frame→map × teacher PyTorch" in md and "student OpenVINO int8 frame→map" in md
