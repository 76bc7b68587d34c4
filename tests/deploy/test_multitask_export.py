"""A multi-task (segmentation + depth) checkpoint exports to one ONNX with named outputs;
every runtime returns them and verification reports figures per output."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from compress.models import create_model, load_model, save_checkpoint
from compress.multitask import MultiTaskModel
from compress.spec import ModelSpec
from deploy.export import compare, export_onnx
from deploy.manifest import read_manifest
from deploy.pipeline import ExportConfig, export_checkpoint
from deploy.runtime import load_runtime
from tests.deploy.conftest import synthetic_batches, tiny_spec

DEPTH = {"name": "depth", "kind": "depth", "unit": "m", "min_depth": 0.5, "max_depth": 30.0,
         "channels": 8}


def multitask_spec() -> dict:
    return replace(tiny_spec(), tasks=[dict(DEPTH)])


@pytest.fixture(scope="module")
def mt_ckpt(trained_ckpt, tmp_path_factory):
    """The trained tiny student of the deploy tests with a depth head on its decoder."""
    torch.manual_seed(1)
    base = load_model(trained_ckpt)
    spec = multitask_spec()
    model = create_model(spec)
    assert isinstance(model, MultiTaskModel)
    model.base.load_state_dict(base.state_dict())
    path = tmp_path_factory.mktemp("mt") / "mt.pt"
    return save_checkpoint(path, model.eval(), spec, metrics=None, epoch=1)


@pytest.fixture(scope="module")
def mt_export(mt_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("mtexp") / "mt"
    logs: list[str] = []
    cfg = ExportConfig(int8=True, openvino=True, val_size=8, calib_size=8, max_drop=100.0,
                       synthetic_val_length=8, accuracy_control=False)
    export_checkpoint(mt_ckpt, out, cfg, log=logs.append)
    return out, logs


def test_checkpoint_round_trip_is_multitask(mt_ckpt):
    model, spec = load_model(mt_ckpt, return_spec=True)
    assert isinstance(model, MultiTaskModel) and spec.tasks[0].name == "depth"
    out = model(torch.zeros(1, 3, 64, 64))
    assert set(out) == {"seg", "depth"} and out["depth"].shape == (1, 64, 64)


def test_bad_tasks_key_is_one_line_naming_the_file(tmp_path):
    from compress.models import ModelError, validate_spec

    with pytest.raises(ModelError, match=r"ckpt.pt: model spec key 'tasks\[0\].name'"):
        validate_spec({**tiny_spec().to_dict(), "tasks": [{"name": "seg"}]}, "ckpt.pt")


@pytest.mark.parametrize("argmax", [False, True])
def test_onnx_has_named_outputs_with_dynamic_axes(mt_ckpt, tmp_path, argmax):
    model, spec = load_model(mt_ckpt, return_spec=True)
    path = export_onnx(model, tmp_path / "m.onnx", spec, size=(64, 64), dynamic_spatial=True,
                       argmax=argmax)
    graph = onnx.load(str(path)).graph
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in graph.output}
    assert list(outs) == ["seg", "depth"]
    seg = ["batch", "height", "width"] if argmax else ["batch", 5, "height", "width"]
    assert outs["seg"] == seg and outs["depth"] == ["batch", "height", "width"]
    rt = load_runtime(path)
    assert rt.output_names == ["seg", "depth"]
    x = synthetic_batches(spec, n=2, batch=2)[0][0]
    got = rt.run_outputs(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    assert got["seg"].dtype == (np.int64 if argmax else np.float32)
    if not argmax:
        np.testing.assert_allclose(got["seg"], want["seg"].numpy(), atol=1e-3)
    np.testing.assert_allclose(got["depth"], want["depth"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(rt.predict(x), got["seg"])  # predict: the seg output


def test_compare_reports_every_output_and_depth_against_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    depth = rng.uniform(1, 10, size=(2, 4, 4)).astype(np.float32)
    labels = depth.copy()
    labels[:, 0] = 0  # no value: not counted
    ref = {"seg": logits, "depth": depth}
    cand = {"seg": logits, "depth": depth + 0.5}
    res = compare(lambda x: ref, lambda x: cand, [(np.zeros((2, 3, 4, 4)), None, labels)],
                  reference_name="pytorch")
    assert res["agreement"] == 1.0  # the seg figures stay at the top level
    d = res["outputs"]["depth"]
    assert d["max_abs_diff"] == pytest.approx(0.5) and d["rmse_vs_reference"] == pytest.approx(0.5)
    assert d["rmse"] == pytest.approx(0.5) and d["rmse_pytorch"] == pytest.approx(0.0)
    assert d["depth_pixels"] == 24
    assert res["outputs"]["seg"]["agreement"] == 1.0
    single = compare(lambda x: logits, lambda x: logits, [(np.zeros((2, 3, 4, 4)), None)])
    assert "outputs" not in single  # a single-task result is as it always was


def test_export_manifest_lists_outputs_and_depth_figures(mt_export):
    out, logs = mt_export
    m = read_manifest(out)
    files = {a["file"]: a for a in m["artifacts"]}
    assert set(files) == {"model.onnx", "model_int8.onnx", "model.xml", "model_int8.xml"}
    assert m["data"]["verification"].get("depth_labels") is True
    for a in m["artifacts"]:
        assert a["output_name"] == "seg"
        names = [o["name"] for o in a["outputs"]]
        assert names == ["seg", "depth"], a["file"]
        depth = a["outputs"][1]
        assert depth["unit"] == "m" and depth["range"] == [0.5, 30.0]
        assert depth["shape"] == ["batch", 64, 64] and depth["kind"] == "depth"
        v = a["verification"]
        assert v["miou"] is not None and 0 <= v["agreement"] <= 1
        dv = v["outputs"]["depth"]
        assert dv["rmse"] is not None and dv["rmse_vs_reference"] is not None, a["file"]
    onnx_v = files["model.onnx"]["verification"]["outputs"]["depth"]
    assert onnx_v["max_abs_diff"] < 1e-2 and onnx_v["rmse_pytorch"] == pytest.approx(
        onnx_v["rmse"], rel=1e-3)
    assert files["model_int8.onnx"]["quantization"]["miou_drop_points"] is not None
    assert any("depth: max |diff|" in line and "RMSE vs labels" in line for line in logs)
    from deploy.cli import format_artifacts

    table = format_artifacts(m).splitlines()
    assert table[0].split()[-4:] == ["depth", "RMSE", "vs", "ref"] and len(table) == 5


def test_int8_and_openvino_return_both_outputs(mt_export):
    out, _ = mt_export
    m = read_manifest(out)
    x = synthetic_batches(ModelSpec.from_dict(m["spec"]), n=2, batch=2)[0][0]
    ref = load_runtime(out / "model.onnx").run_outputs(x)
    for name in ("model_int8.onnx", "model.xml", "model_int8.xml"):
        got = load_runtime(out / name).run_outputs(x)
        assert list(got) == ["seg", "depth"], name
        assert got["seg"].shape == ref["seg"].shape and got["depth"].shape == (2, 64, 64)
        assert np.abs(got["depth"] - ref["depth"]).mean() < 3.0, name  # metres, 0.5..30 range


def test_argmax_export_gives_class_ids_and_depth(mt_ckpt, tmp_path):
    out = tmp_path / "ids"
    export_checkpoint(mt_ckpt, out, ExportConfig(argmax=True, val_size=4, synthetic_val_length=4))
    a = read_manifest(out)["artifacts"][0]
    seg, depth = a["outputs"]
    assert seg == {"name": "seg", "kind": "segmentation", "shape": ["batch", 64, 64],
                   "dtype": "int64", "content": "class ids"}
    assert depth["name"] == "depth" and depth["dtype"] == "float32"
    v = a["verification"]
    assert v["agreement"] >= 0.999 and v["max_abs_diff"] is None  # ids: no logit diff
    assert v["outputs"]["depth"]["max_abs_diff"] < 1e-2
    got = load_runtime(out / "model.onnx").run_outputs(np.zeros((1, 3, 64, 64), np.float32))
    assert got["seg"].dtype == np.int64 and got["seg"].shape == (1, 64, 64)


def test_eval_predictor_of_an_artifact_returns_what_the_checkpoint_returns(mt_ckpt, mt_export):
    from deploy.runtime import load_predictor

    out, _ = mt_export
    x = torch.from_numpy(synthetic_batches(multitask_spec(), n=2, batch=2)[0][0])
    predict, spec = load_predictor(out / "model.onnx")
    got = predict(x)
    with torch.no_grad():
        want = load_model(mt_ckpt)(x)
    assert list(got) == list(want) == ["seg", "depth"]
    torch.testing.assert_close(got["depth"], want["depth"], atol=1e-3, rtol=1e-3)
    assert got["seg"].shape == want["seg"].shape and spec.tasks[0].name == "depth"
