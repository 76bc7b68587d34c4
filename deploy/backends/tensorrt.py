"""TensorRT: engine building from ONNX, a small runner and the runtime, on an NVIDIA GPU.

- FP16 engines come from the f32 ONNX model. TensorRT 10 uses the ``BuilderFlag.FP16``
  flag (weak typing); TensorRT 11 removed precision flags (strong typing only), so there
  the ONNX model is first converted to mixed precision with ModelOpt AutoCast.
- INT8 engines come from the QDQ model written by :mod:`deploy.quantize` (explicit
  quantization): the scales are NNCF's, TensorRT does no calibration of its own. TensorRT
  accepts symmetric quantization only: quantize with the ``performance`` preset.
- Dynamic axes get one optimization profile (min / opt / max shapes); the workspace is
  capped with ``set_memory_pool_limit``; a timing cache file makes rebuilds fast.

Device buffers are PyTorch CUDA tensors, so no pycuda / cuda-python is needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.backends.base import INSTALL_GPU, Backend, Runtime
from deploy.errors import BackendUnavailable, DeployError, ManifestError

NAME = "tensorrt"
LABEL = "TensorRT"
SUFFIXES = (".engine", ".plan")


def missing_requirements() -> list[str]:
    """What is missing for TensorRT here: the package and/or an NVIDIA GPU (empty if none)."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package is not installed")
    if not nvidia_gpu_available():
        missing.append("no NVIDIA GPU is visible (torch.cuda.is_available() is False)")
    return missing


def nvidia_gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.version.cuda and not torch.version.hip)


def check_tensorrt(what: str = "--trt") -> None:
    """Raise at once when TensorRT cannot run here.

    Raises:
        BackendUnavailable: naming what is missing (package, GPU or both) and how to
            install the GPU extra.
    """
    missing = missing_requirements()
    if missing:
        raise BackendUnavailable(f"{what}: TensorRT needs an NVIDIA GPU and the tensorrt "
                                 f"package, and here {' and '.join(missing)}; on a machine "
                                 f"with an NVIDIA GPU run {INSTALL_GPU}")


def gpu_environment(index: int = 0) -> dict[str, Any]:
    """TensorRT / CUDA / GPU names for manifests."""
    import torch

    env: dict[str, Any] = {"cuda": torch.version.cuda}
    try:
        import tensorrt as trt

        env["tensorrt"] = trt.__version__
    except ImportError:
        env["tensorrt"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(index)
        env.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return env


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops TensorRT propagates Q/DQ across (data movement, max): a Conv after a Concat of two
# quantized tensors still runs as an INT8 kernel
QDQ_COMMUTING = ("Concat", "MaxPool", "Reshape", "Transpose", "Slice", "Resize", "Flatten",
                 "Squeeze", "Unsqueeze", "Pad")


def check_qdq_graph(proto) -> dict[str, Any]:
    """Check that a QDQ ONNX model is what TensorRT's explicit quantization takes.

    Every QuantizeLinear/DequantizeLinear must be signed 8-bit (int8 zero point) with all
    zero points 0 (symmetric), and every quantized weighted layer (Conv, Gemm, MatMul...)
    must take both its input and its weight through a DequantizeLinear (directly or across
    the data-movement ops of :data:`QDQ_COMMUTING`), so TensorRT can fuse the pair into an
    INT8 kernel. Runs on the CPU; no TensorRT needed.

    Returns:
        ``{"quantize_nodes", "weighted_layers", "weighted_quantized", "float_layers",
        "half_quantized"}``: counts, and the names of weighted layers left in float.

    Raises:
        DeployError: a quantizer that is unsigned or has a non-zero zero point, or a
            weighted layer with only one of its two inputs quantized (names given).
    """
    from onnx import TensorProto, numpy_helper

    from deploy.quantize import WEIGHTED_OPS

    inits = {t.name: t for t in proto.graph.initializer}
    consts = {o: n for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    bad = []
    pairs = 0
    for node in proto.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        pairs += node.op_type == "QuantizeLinear"
        if len(node.input) < 3 or not node.input[2]:
            bad.append(f"{node.name} (no zero point: uint8 by default)")
            continue
        zp_name = node.input[2]
        if zp_name in inits:
            zp = inits[zp_name]
        elif zp_name in consts:
            zp = consts[zp_name].attribute[0].t
        else:
            bad.append(f"{node.name} (zero point {zp_name} is not a constant)")
            continue
        if zp.data_type != TensorProto.INT8:
            bad.append(f"{node.name} (zero point type {TensorProto.DataType.Name(zp.data_type)})")
        elif numpy_helper.to_array(zp).any():
            bad.append(f"{node.name} (non-zero zero point)")
    if bad:
        raise DeployError(f"tensorrt: {len(bad)} quantizer(s) are not signed symmetric INT8, "
                          f"which TensorRT needs: {', '.join(bad[:5])}"
                          + (" ..." if len(bad) > 5 else ""))
    producers = {o: n for n in proto.graph.node for o in n.output}

    def quantized(tensor: str, depth: int = 0) -> bool:
        """Comes from a DequantizeLinear, directly or through ops TensorRT moves Q/DQ across."""
        node = producers.get(tensor)
        if node is None or depth > 16:
            return False
        if node.op_type == "DequantizeLinear":
            return True
        data = [i for i in node.input[:1 if node.op_type != "Concat" else None] if i]
        return node.op_type in QDQ_COMMUTING and bool(data) and all(
            quantized(i, depth + 1) for i in data)

    weighted = [n for n in proto.graph.node if n.op_type in WEIGHTED_OPS]
    fed = {n.name: [quantized(i) for i in n.input[:2]] for n in weighted}
    half = [name for name, f in fed.items() if any(f) and not all(f)]
    if half:
        raise DeployError(f"tensorrt: {len(half)} weighted layer(s) have only one of input and "
                          f"weight quantized, which TensorRT cannot fuse: {', '.join(half[:5])}")
    quantized = [name for name, f in fed.items() if all(f)]
    return {"quantize_nodes": pairs, "weighted_layers": len(weighted),
            "weighted_quantized": len(quantized),
            "float_layers": [name for name, f in fed.items() if not any(f)],
            "half_quantized": half}


def _weakly_typed(trt) -> bool:
    """TensorRT 10 has precision builder flags; 11 removed them (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16")


def _fp16_onnx(onnx_path: Path) -> bytes:
    """Mixed-precision (fp16) ONNX for strongly typed TensorRT, via ModelOpt AutoCast."""
    try:
        from modelopt.onnx import autocast
    except ImportError:
        raise BackendUnavailable(
            "tensorrt: this TensorRT has no FP16 builder flag (strong typing only); an fp16 "
            "engine needs ModelOpt AutoCast: pip install 'nvidia-modelopt[onnx]'") from None
    model = autocast.convert_to_mixed_precision(onnx_path=str(onnx_path),
                                                low_precision_type="fp16", keep_io_types=True)
    return model.SerializeToString()


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, precision: str = "fp16",
                 shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None,
                 workspace_gib: float = 4.0, timing_cache: str | Path | None = None
                 ) -> dict[str, Any]:
    """Build and serialize a TensorRT engine from an ONNX model.

    Args:
        onnx_path: f32 ONNX (for ``fp16``/``f32``) or the QDQ ONNX (for ``int8``).
        engine_path: where the serialized engine goes.
        precision: ``fp16``, ``int8`` (explicit quantization from Q/DQ nodes) or ``f32``.
        shapes: ``(min, opt, max)`` input shapes for the optimization profile; needed when
            the model has dynamic axes.
        workspace_gib: cap on the builder's workspace memory pool.
        timing_cache: file to read tactic timings from and write them back to.

    Returns:
        Build facts for the manifest (versions, GPU, typing, profile, workspace).

    Raises:
        BackendUnavailable: TensorRT or a GPU is missing.
        DeployError: the parser rejected the model or the build failed (reason given).
    """
    check_tensorrt("tensorrt")
    import tensorrt as trt

    from compress.io import atomic_write

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if precision not in ("fp16", "int8", "f32"):
        raise InputError(f"tensorrt: precision must be fp16, int8 or f32, not {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = _weakly_typed(trt)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is implied from 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if not weak and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    data = _fp16_onnx(onnx_path) if precision == "fp16" and not weak else onnx_path.read_bytes()
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise DeployError(f"tensorrt: the ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if weak and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may use fp16
    if weak and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the graph: explicit quantization

    inp = network.get_input(0)
    dynamic = any(d < 0 for d in inp.shape)
    profile_info = None
    if dynamic:
        if shapes is None:
            raise InputError(f"tensorrt: {onnx_path.name} has dynamic axes {tuple(inp.shape)}: "
                             "give (min, opt, max) shapes")
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, *[tuple(s) for s in shapes])
        config.add_optimization_profile(profile)
        profile_info = {"input": inp.name, "min": list(shapes[0]), "opt": list(shapes[1]),
                        "max": list(shapes[2])}

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError(f"tensorrt: building a {precision} engine from {onnx_path.name} "
                          "failed (see TensorRT's log above)")
    engine_path.write_bytes(memoryview(serialized))
    if cache_path is not None:
        new_cache = memoryview(config.get_timing_cache().serialize())
        atomic_write(cache_path, lambda p: p.write_bytes(new_cache))
    return {
        **gpu_environment(),
        "typing": "weak (builder flags)" if weak else "strong",
        "workspace_gib": workspace_gib,
        "profile": profile_info,
        "timing_cache": str(cache_path) if cache_path else None,
    }


class TensorRTEngine:
    """A deserialized engine with one execution context; ``run`` takes numpy in and out."""

    def __init__(self, path: str | Path, device: str = "cuda") -> None:
        check_tensorrt("runtime")
        import tensorrt as trt
        import torch

        self.path, self._trt, self._torch = Path(path), trt, torch
        self.device = torch.device(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise DeployError(f"tensorrt: cannot deserialize {self.path.name} (built by "
                                  "another TensorRT version or for another GPU?)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if len(self.inputs) != 1 or not self.outputs:
            raise DeployError(f"tensorrt: {self.path.name} has inputs {self.inputs} and outputs "
                              f"{self.outputs}; expected one image input and an output")
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.info = {**gpu_environment(self.device.index or 0), "input_shape": list(shape)}

    def _torch_dtype(self, dtype):
        trt, torch = self._trt, self._torch
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.INT32: torch.int32, trt.DataType.INT8: torch.int8,
                 trt.DataType.BOOL: torch.bool}
        if hasattr(trt.DataType, "INT64"):
            table[trt.DataType.INT64] = torch.int64
        return table[dtype]

    def upload(self, images: np.ndarray):
        """A batch as a device tensor of the engine's input type (host -> device copy)."""
        x = self._torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)
        return x.to(self._torch_dtype(self.engine.get_tensor_dtype(self.inputs[0]))).contiguous()

    def enqueue(self, x):
        """Run the engine on a device tensor on the current stream; the first output stays
        on the device (no host copy, no synchronisation)."""
        return self.enqueue_all(x)[self.outputs[0]]

    def enqueue_all(self, x) -> dict:
        """Like :meth:`enqueue`, every output binding by its tensor name (each on the
        device, in the engine's order: a multi-task engine's ``seg`` and ``depth``)."""
        torch = self._torch
        name = self.inputs[0]
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        outs = {}
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            dtype = self._torch_dtype(self.engine.get_tensor_dtype(out))
            outs[out] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(out, outs[out].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DeployError(f"tensorrt: executing {self.path.name} failed")
        return outs

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.enqueue_all(self.upload(images))
        self._torch.cuda.current_stream(self.device).synchronize()
        return {n: (y.float() if y.is_floating_point() else y.long()).cpu().numpy()
                for n, y in outs.items()}

    def run_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``float32 [N, 3, H, W]`` -> every output binding as numpy (float32 or int64),
        by tensor name."""
        return in_batches(self._run, np.ascontiguousarray(images, np.float32), self.fixed_batch)

    def run(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, 3, H, W]`` -> the first output as numpy (float32 or int64)."""
        return self.run_all(images)[self.outputs[0]]


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine on an NVIDIA GPU (``device`` ``cuda[:N]``)."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cuda",
                 threads: int | None = None, precision: str | None = None,
                 entry: dict | None = None) -> None:
        if spec is None:
            raise ManifestError(f"runtime: {path} is a TensorRT engine without a manifest.json "
                                "beside it that lists it: the spec is unknown")
        device = "cuda" if device in ("cpu", "gpu") else device
        self.engine = TensorRTEngine(path, device=device)
        built = (entry or {}).get("precision")
        if precision is not None and built is not None and precision != built:
            raise InputError(f"runtime: {path.name} was built for {built}; a TensorRT engine "
                             f"runs as built and cannot switch to {precision}")
        super().__init__(path, spec, device, built or "unknown", self.engine.info)
        if len(self.output_names) > 1:
            missing = [n for n in self.output_names if n not in self.engine.outputs]
            if missing:
                raise ManifestError(f"runtime: {path} has output bindings "
                                    f"{self.engine.outputs} but its spec names "
                                    f"{self.output_names}: no {missing[0]!r}; refusing it")

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.engine.run_all(images)
        if len(self.output_names) == 1:  # a single-output engine's first binding
            return {self.output_names[0]: outs[self.engine.outputs[0]]}
        return {n: outs[n] for n in self.output_names}

    def device_call(self):
        return self.engine.upload, self.engine.enqueue


def convert(onnx_path: Path, dst: Path, *, spec: ModelSpec | None = None,
            precision: str = "fp16", size: tuple[int, int] | None = None) -> Path:
    """The registry's converter: :func:`build_engine` at ``precision``, with a static
    batch-1 profile at ``size`` when given."""
    shape = (1, 3, *size) if size else None
    build_engine(onnx_path, dst, precision=precision,
                 shapes=(shape, shape, shape) if shape else None)
    return Path(dst)


def available(device: str) -> str | None:
    """Why TensorRT cannot run on ``device`` here (not a CUDA device, no GPU, no tensorrt
    package), or None. :func:`check_tensorrt` raises the long form for ``--trt``."""
    import torch

    if not str(device).startswith("cuda"):
        return f"{LABEL}: no GPU" if not torch.cuda.is_available() else f"{LABEL}: GPU only"
    if not torch.cuda.is_available():
        return f"{LABEL}: no GPU"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT: the tensorrt package is not installed (pip install tensorrt)"
    return None


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> TensorRTRuntime:
    """An engine carries no spec: it must come from the manifest beside it."""
    return TensorRTRuntime(path, spec, device, threads, precision, entry)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("fp16", "int8", "f32"),
                  devices=("cuda",), libraries=("tensorrt",), available=available, load=load,
                  packages=("tensorrt",), builds=("fp16", "int8"), convert=convert,
                  int8_preset="performance", tool="trtexec")
