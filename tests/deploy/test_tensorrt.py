"""TensorRT: the clear error without a GPU, and a real build where one exists."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from compress.spec import ModelSpec
from deploy.backends.tensorrt import check_tensorrt
from deploy.errors import BackendUnavailable

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


def test_check_names_what_is_missing(monkeypatch):
    import deploy.backends.tensorrt as t

    monkeypatch.setattr(t, "nvidia_gpu_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable) as e:
        check_tensorrt("--trt")
    msg = str(e.value)
    assert "no NVIDIA GPU" in msg and "tensorrt package is not installed" in msg
    assert "pip install 'segcompress[gpu]'" in msg
    monkeypatch.setattr(t, "nvidia_gpu_available", lambda: True)
    with pytest.raises(BackendUnavailable, match="tensorrt package is not installed") as e:
        check_tensorrt("--trt")
    assert "GPU" not in str(e.value).split("here")[1].split(";")[0]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT),
                    reason="needs an NVIDIA GPU (torch.cuda) and the tensorrt package")
def test_tensorrt_build_and_run(trained_ckpt, tmp_path):
    from deploy.manifest import read_manifest
    from deploy.pipeline import ExportConfig, export_checkpoint
    from deploy.runtime import load_runtime
    from tests.deploy.conftest import synthetic_batches

    out = tmp_path / "exp"
    cfg = ExportConfig(int8=True, trt=True, val_size=8, calib_size=16, max_drop=10.0,
                       synthetic_val_length=8, trt_workspace_gib=1.0,
                       trt_timing_cache=tmp_path / "timing.cache")
    export_checkpoint(trained_ckpt, out, cfg)
    m = read_manifest(out)
    engines = {a["file"]: a for a in m["artifacts"] if a["backend"] == "tensorrt"}
    assert set(engines) == {"model_fp16.engine", "model_int8.engine"}
    assert m["environment"]["gpu"]["gpu"] and m["environment"]["gpu"]["tensorrt"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    images = synthetic_batches(ModelSpec.from_dict(m["spec"]), "val", n=4)[0][0]
    ref = load_runtime(out / "model.onnx").predict(images).argmax(1)
    for name, floor in (("model_fp16.engine", 0.99), ("model_int8.engine", 0.95)):
        rt = load_runtime(out / name, device="cuda")
        assert rt.backend == "tensorrt" and rt.precision == name.split("_")[1].split(".")[0]
        assert (rt.predict(images).argmax(1) == ref).mean() >= floor, name


@pytest.mark.skipif(not HAS_TRT, reason="the tensorrt package is not installed here (it comes "
                    "with the GPU extra: pip install 'segcompress[gpu]')")
def test_builder_api_names_exist_in_the_installed_tensorrt():
    """What build_engine and TensorRTEngine call, checked on the real module (no GPU needed
    to import it): a rename in a TensorRT release fails here, not on a user's GPU."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - the libraries may be missing without a GPU
        pytest.skip(f"import tensorrt fails here: {str(e).splitlines()[0]}")
    from deploy.backends.tensorrt import _weakly_typed

    for name in ("Logger", "Builder", "OnnxParser", "Runtime", "NetworkDefinitionCreationFlag",
                 "MemoryPoolType", "BuilderFlag", "TensorIOMode", "DataType"):
        assert hasattr(trt, name), name
    assert hasattr(trt.MemoryPoolType, "WORKSPACE")
    assert hasattr(trt.TensorIOMode, "INPUT")
    for name in ("create_network", "create_builder_config", "create_optimization_profile",
                 "build_serialized_network"):
        assert hasattr(trt.Builder, name), name
    for name in ("set_memory_pool_limit", "create_timing_cache", "set_timing_cache",
                 "add_optimization_profile", "get_timing_cache"):
        assert hasattr(trt.IBuilderConfig, name), name
    if _weakly_typed(trt):
        assert hasattr(trt.BuilderFlag, "INT8")
    else:
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


@pytest.fixture(scope="module")
def trt_graph_export(trained_ckpt, tmp_path_factory):
    """``--int8 --target tensorrt`` on the CPU: the QDQ graph TensorRT would build from."""
    from deploy.pipeline import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("trt") / "exp"
    cfg = ExportConfig(int8=True, target="tensorrt", val_size=8, calib_size=16, max_drop=10.0,
                       synthetic_val_length=8)
    return out, export_checkpoint(trained_ckpt, out, cfg)


def test_tensorrt_target_writes_a_signed_symmetric_qdq_graph(trt_graph_export):
    import onnx
    from onnx import TensorProto, numpy_helper

    out, manifest = trt_graph_export
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model_int8.onnx")
    assert entry["target"] == "tensorrt" and entry["quantization"]["preset"] == "performance"
    assert entry["quantization"]["budget"] == "labels"
    assert entry["verification"]["miou"] is not None  # scored on the CPU under the budget
    proto = onnx.load(str(out / "model_int8.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and entry["tensorrt_graph"]["quantize_nodes"] == sum(
        n.op_type == "QuantizeLinear" for n in qdq)
    for n in qdq:  # read from the file itself, not from the checker
        zp = inits[n.input[2]]
        assert zp.data_type == TensorProto.INT8, n.name
        assert not numpy_helper.to_array(zp).any(), n.name
    producers = {o: n for n in proto.graph.node for o in n.output}

    def from_dq(t):  # directly, or through a Concat of dequantized tensors
        n = producers.get(t)
        return n is not None and (n.op_type == "DequantizeLinear" or (
            n.op_type == "Concat" and all(from_dq(i) for i in n.input)))

    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    fed = [from_dq(n.input[0]) and from_dq(n.input[1]) for n in convs]
    assert sum(fed) == entry["tensorrt_graph"]["weighted_quantized"] > len(convs) // 2


def test_qdq_check_refuses_the_asymmetric_cpu_graph(trained_ckpt, tmp_path):
    """The default (``mixed``) CPU graph has unsigned / asymmetric activations: the check
    must refuse it, or it would pass anything."""
    import onnx

    from deploy.backends.tensorrt import check_qdq_graph
    from deploy.errors import DeployError
    from deploy.pipeline import ExportConfig, export_checkpoint

    export_checkpoint(trained_ckpt, tmp_path / "cpu", ExportConfig(
        int8=True, val_size=8, calib_size=16, max_drop=10.0, synthetic_val_length=8))
    with pytest.raises(DeployError, match="not signed symmetric INT8"):
        check_qdq_graph(onnx.load(str(tmp_path / "cpu" / "model_int8.onnx")))


def test_multi_output_engine_maps_bindings_by_name(tmp_path, monkeypatch):
    """The multi-binding path without TensorRT (the engine faked): a multi-task spec's
    outputs come from the engine's bindings by name, in any binding order; a single-task
    one from its first binding; a missing binding is refused at load."""
    import numpy as np

    import deploy.backends.tensorrt as t
    from deploy.errors import ManifestError
    from tests.deploy.conftest import tiny_spec

    class FakeEngine:
        outputs = ("depth", "seg")  # TensorRT may list bindings in another order

        def __init__(self, path, device="cuda"):
            self.info = {}

        def run_all(self, images):
            n = images.shape[0]
            return {"seg": np.ones((n, 5, 4, 4), np.float32),
                    "depth": np.full((n, 4, 4), 2.0, np.float32)}

    monkeypatch.setattr(t, "TensorRTEngine", FakeEngine)
    spec = replace(tiny_spec(), output="logits", tasks=[{"name": "depth"}])
    rt = t.TensorRTRuntime(tmp_path / "m.engine", spec, entry={"precision": "fp16"})
    x = np.zeros((2, 3, 4, 4), np.float32)
    out = rt.run_outputs(x)
    assert list(out) == ["seg", "depth"] and out["depth"].shape == (2, 4, 4)
    assert out["depth"].dtype == np.float32 and (out["depth"] == 2.0).all()
    assert rt.predict(x).shape == (2, 5, 4, 4)
    single = t.TensorRTRuntime(tmp_path / "s.engine", replace(tiny_spec(), output="logits"))
    FakeEngine.outputs = ("seg", "depth")
    assert list(single.run_outputs(x)) == ["logits"]
    FakeEngine.outputs = ("seg",)  # a multi-task spec on an engine without its depth binding
    with pytest.raises(ManifestError, match="no 'depth'"):
        t.TensorRTRuntime(tmp_path / "m.engine", spec)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT),
                    reason="needs an NVIDIA GPU (torch.cuda) and the tensorrt package")
def test_tensorrt_multitask_engine_returns_both_outputs(trained_ckpt, tmp_path):
    from compress.models import create_model, load_model, save_checkpoint
    from deploy.manifest import read_manifest
    from deploy.pipeline import ExportConfig, export_checkpoint
    from deploy.runtime import load_runtime
    from tests.deploy.conftest import synthetic_batches, tiny_spec

    spec = replace(tiny_spec(), tasks=[{"name": "depth", "max_depth": 30.0, "channels": 8}])
    model = create_model(spec)
    model.base.load_state_dict(load_model(trained_ckpt).state_dict())
    ckpt = save_checkpoint(tmp_path / "mt.pt", model.eval(), spec, epoch=1)
    out = tmp_path / "exp"
    export_checkpoint(ckpt, out, ExportConfig(trt=True, val_size=4, synthetic_val_length=4,
                                              trt_workspace_gib=1.0))
    m = read_manifest(out)
    engine = next(a for a in m["artifacts"] if a["backend"] == "tensorrt")
    assert [o["name"] for o in engine["outputs"]] == ["seg", "depth"]
    assert engine["verification"]["outputs"]["depth"]["max_abs_diff"] is not None
    images = synthetic_batches(m["spec"], "val", n=2, batch=2)[0][0]
    ref = load_runtime(out / "model.onnx").run_outputs(images)
    got = load_runtime(out / engine["file"], device="cuda").run_outputs(images)
    assert list(got) == ["seg", "depth"]
    assert abs(got["depth"] - ref["depth"]).max() < 0.5  # metres, fp16
