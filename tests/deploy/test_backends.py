"""The backend registry: one suffix table, one precision vocabulary, ``available()`` with
a reason, and deploy's modules importable one by one (no import cycle)."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.errors import InputError
from deploy import runtime as registry
from deploy.backends.base import PRECISION_ALIASES, PRECISIONS, Runtime

REPO = Path(__file__).resolve().parents[2]
NAMES = ("torch", "onnxruntime", "openvino", "tensorrt", "aoti", "executorch", "litert")
DEPLOY_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "deploy").rglob("*.py"))


def test_every_backend_is_registered_once():
    assert [b.name for b in registry.backends()] == list(NAMES)
    for name in NAMES:
        assert registry.get_backend(name).name == name
    with pytest.raises(InputError, match="unknown backend 'tflite'; valid: torch, onnxruntime"):
        registry.get_backend("tflite")  # the format, not the backend (litert)


def test_every_suffix_maps_to_one_backend():
    seen: dict[str, str] = {}
    for b in registry.backends():
        assert b.suffixes, b.name
        for suffix in b.suffixes:
            assert suffix.startswith(".") and suffix == suffix.lower(), suffix
            assert suffix not in seen, f"{suffix}: {seen.get(suffix)} and {b.name}"
            seen[suffix] = b.name
            assert registry.backend_for_path(f"dir/model{suffix}") is b
            assert registry.backend_for_path(f"model{suffix.upper()}") is b  # case-blind
    assert registry.SUFFIXES == seen
    assert seen == {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime",
                    ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt",
                    ".pt2": "aoti", ".pte": "executorch", ".tflite": "litert"}
    with pytest.raises(InputError, match=r"cannot tell the backend of m\.mlmodel; suffixes: "
                                         r"\.pt, \.pth, \.onnx"):
        registry.backend_for_path("m.mlmodel")


@pytest.mark.parametrize("name", NAMES)
def test_each_backend_module_owns_its_runtime(name):
    module = importlib.import_module(f"deploy.backends.{name}")
    backend = module.BACKEND
    assert backend is registry.get_backend(name)
    runtimes = [c for _, c in inspect.getmembers(module, inspect.isclass)
                if issubclass(c, Runtime) and c is not Runtime and c.__module__ == module.__name__]
    assert len(runtimes) == 1 and runtimes[0].backend == name
    assert set(backend.precisions) <= set(PRECISIONS)
    assert backend.devices and set(backend.devices) <= {"cpu", "cuda"}
    assert registry.Runtime is Runtime


def test_precision_aliases():
    for alias, name in PRECISION_ALIASES.items():
        assert name in PRECISIONS
        assert registry.normalize_precision(alias) == name
        assert registry.normalize_precision(alias.upper()) == name
        assert registry.canonical_precision(alias) == name
    for name in PRECISIONS:
        assert PRECISION_ALIASES[name] == name
    assert registry.normalize_precision(None) is None
    assert {registry.normalize_precision(p) for p in ("fp32", "float32", "float")} == {"f32"}
    assert {registry.normalize_precision(p) for p in ("f16", "float16", "half")} == {"fp16"}
    assert registry.normalize_precision("bfloat16") == "bf16"
    assert registry.normalize_precision("i8") == "int8"
    with pytest.raises(InputError, match="unknown precision 'int4'; valid: f32, bf16, fp16, int8"):
        registry.normalize_precision("int4")
    # names read back from backends: OpenVINO's type repr, and unknown ones kept as they are
    assert registry.canonical_precision("<Type: 'float32'>") == "f32"
    assert registry.canonical_precision("<Type: 'bfloat16'>") == "bf16"
    assert registry.canonical_precision("U8") == "u8"
    assert registry.canonical_precision(None) is None


def test_devices_each_backend_runs_on():
    on = {b.name: (b.runs_on("cpu"), b.runs_on("cuda"), b.runs_on("cuda:1")) for b in
          registry.backends()}
    assert on == {"torch": (True, True, True), "onnxruntime": (True, True, True),
                  "openvino": (True, False, False), "tensorrt": (False, True, True),
                  "aoti": (True, True, True), "executorch": (True, False, False),
                  "litert": (True, False, False)}


def test_available_gives_a_reason_or_none():
    trt = registry.get_backend("tensorrt")
    why = trt.available("cpu")  # a CPU device never runs TensorRT, GPU or not
    assert isinstance(why, str) and why.startswith("TensorRT: ")
    assert registry.get_backend("openvino").available("cuda").startswith("OpenVINO: ")
    assert registry.get_backend("torch").available("cpu") is None
    assert registry.get_backend("onnxruntime").available("cpu") is None
    assert registry.get_backend("openvino").available("cpu") is None
    assert registry.get_backend("aoti").available("cpu") is None


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("tensorrt")
                    is not None, reason="TensorRT and a GPU are present here")
def test_tensorrt_is_unavailable_here_with_a_reason():
    why = registry.get_backend("tensorrt").available("cuda")
    assert isinstance(why, str) and why.startswith("TensorRT: ")
    if not torch.cuda.is_available():
        assert why == "TensorRT: no GPU"
        for b in registry.backends():
            assert registry.get_backend(b.name).available("cuda") is not None, b.name


@pytest.mark.parametrize("module", DEPLOY_MODULES)
def test_each_deploy_module_imports_alone(module):
    """A fresh interpreter imports the module by itself: an import cycle (even one hidden in
    a package ``__init__``) fails here with a partially initialised module."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_registry_imports_no_backend_library():
    code = ("import sys, deploy.runtime; heavy = [m for m in ('torch', 'onnxruntime', "
            "'openvino', 'nncf', 'tensorrt', 'onnx') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", NAMES)
def test_each_backend_describes_what_bench_asks(name):
    """bench spells no backend: what it needs (role, what an export builds, the converter,
    packages, where it is timed, the file an export writes) is the registry's."""
    b = registry.get_backend(name)
    assert b.role in ("checkpoint", "source", "converted", "compiled")
    assert b.builds and set(b.builds) <= set(b.precisions)
    assert (b.convert is not None) == (b.role == "converted")
    assert b.packages and set(b.packages) <= set(registry.packages())
    assert b.default_device() in b.devices and b.title
    for p in b.builds:
        assert registry.backend_for_path(b.artifact_name(p)) is b
    assert b.companions(Path("nowhere") / f"m{b.suffixes[0]}") == []


def test_one_checkpoint_and_one_source_backend():
    roles = [b.role for b in registry.backends()]
    assert roles.count("checkpoint") == roles.count("source") == 1
    assert registry.checkpoint_backend().suffixes[0] == ".pt"
    assert registry.source_backend().artifact_name("int8") == "model_int8.onnx"
    assert registry.names() == tuple(b.name for b in registry.backends())
