"""TensorRT: the clear error without a GPU, and a real build where one exists."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from deploy.errors import BackendUnavailable
from deploy.tensorrt import check_tensorrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


def test_check_names_what_is_missing(monkeypatch):
    import deploy.tensorrt as t

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
    images = synthetic_batches(m["spec"], "val", n=4)[0][0]
    ref = load_runtime(out / "model.onnx").predict(images).argmax(1)
    for name, floor in (("model_fp16.engine", 0.99), ("model_int8.engine", 0.95)):
        rt = load_runtime(out / name, device="cuda")
        assert rt.backend == "tensorrt" and rt.precision == name.split("_")[1].split(".")[0]
        assert (rt.predict(images).argmax(1) == ref).mean() >= floor, name


class _FakeTensorRT:
    """A stand-in for the ``tensorrt`` module that records the builder calls made on it
    (no GPU here): checks that :func:`build_engine` drives the API as documented."""

    def __init__(self, version: str = "10.9.0", weak: bool = True) -> None:
        import types

        calls: dict = {"flags": [], "profile": None, "workspace": None, "cache_in": None}
        self.calls = calls
        trt = types.ModuleType("tensorrt")
        trt.__version__ = version
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, s: None})
        flags = {"INT8": 1}
        if weak:
            flags["FP16"] = 0
        trt.BuilderFlag = type("BuilderFlag", (), flags)
        trt.NetworkDefinitionCreationFlag = type("F", (), {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 5})
        trt.MemoryPoolType = type("M", (), {"WORKSPACE": "workspace"})

        class Input:
            name, shape = "images", (-1, 3, 64, 64)

        class Network:
            def __init__(self, f):
                calls["network_flags"] = f

            def get_input(self, i):
                return Input()

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                calls["parsed"] = len(data)
                return True

        class Cache:
            def serialize(self):
                return b"timing"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls["workspace"] = (pool, size)

            def set_flag(self, flag):
                calls["flags"].append(flag)

            def add_optimization_profile(self, p):
                calls["profile"] = p.shapes

            def create_timing_cache(self, data):
                calls["cache_in"] = data
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return Cache()

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                self.shapes = (name, lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            create_network = staticmethod(Network)
            create_builder_config = staticmethod(Config)
            create_optimization_profile = staticmethod(Profile)

            def build_serialized_network(self, network, config):
                return b"engine-bytes"

        trt.Builder, trt.OnnxParser = Builder, Parser
        self.module = trt


def _install(monkeypatch, fake):
    import importlib.machinery
    import sys

    import deploy.tensorrt as t

    fake.module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(t, "nvidia_gpu_available", lambda: True)


def test_build_engine_drives_the_builder_api(monkeypatch, tmp_path):
    from deploy.tensorrt import build_engine

    fake = _FakeTensorRT()
    _install(monkeypatch, fake)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    shapes = ((1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))
    info = build_engine(onnx_path, tmp_path / "m.engine", precision="int8", shapes=shapes,
                        workspace_gib=1.5, timing_cache=tmp_path / "t.cache")
    assert (tmp_path / "m.engine").read_bytes() == b"engine-bytes"
    assert (tmp_path / "t.cache").read_bytes() == b"timing"
    assert fake.calls["flags"] == [0, 1]  # FP16 then INT8: explicit quantization from Q/DQ
    assert fake.calls["workspace"] == ("workspace", int(1.5 * 2**30))
    assert fake.calls["profile"] == ("images", *shapes)
    assert info["typing"].startswith("weak") and info["profile"]["max"] == [8, 3, 64, 64]


def test_build_engine_on_strongly_typed_tensorrt_needs_autocast_for_fp16(monkeypatch, tmp_path):
    from deploy.tensorrt import build_engine

    _install(monkeypatch, _FakeTensorRT("11.4.0", weak=False))
    monkeypatch.setitem(__import__("sys").modules, "modelopt", None)  # not installed
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    with pytest.raises(BackendUnavailable, match="ModelOpt AutoCast"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="fp16",
                     shapes=((1, 3, 64, 64),) * 3)
    info = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", precision="int8",
                        shapes=((1, 3, 64, 64),) * 3)
    assert info["typing"] == "strong"
