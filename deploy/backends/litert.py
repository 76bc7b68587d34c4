"""LiteRT (TensorFlow Lite): the student converted by ``litert-torch`` into a ``.tflite``
model (what Android and many ARM boards run), f32 and INT8, run here with the LiteRT
interpreter (``ai-edge-litert``, XNNPACK on the CPU).

``litert-torch`` cannot be installed beside the toolkit (it pins older ``pydantic`` /
``typing-extensions`` than the toolkit's trackers need, and brings JAX), so the conversion
runs in a separate environment, as a subprocess: ``scripts/setup_litert.sh`` builds
``.venv-litert`` (torch, the toolkit, litert-torch), or ``SEGCOMPRESS_LITERT_PYTHON`` names
another interpreter that has them. That process runs :mod:`deploy.litert_convert`: it loads
the checkpoint with the toolkit's own loader (``weights_only``), traces the student at the
export's batch and size and converts it; with ``--int8``, PT2E quantisation with
litert-torch's ``PT2EQuantizer`` (symmetric, per-channel weights, static activations),
calibrated on the NNCF path's images (passed as one ``.npy`` of float32 arrays, read with
``allow_pickle=False``). The interpreter itself (``ai-edge-litert``) installs beside the
toolkit: ``pip install 'segcompress[litert]'``.

A ``.tflite`` carries no segcompress spec: it is loaded beside the ``manifest.json`` of
the export that wrote it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from compress.errors import one_line
from compress.spec import ModelSpec
from deploy.arrays import in_batches
from deploy.backends.base import Backend, Runtime, built_precision
from deploy.errors import MESSAGE_CHARS, BackendUnavailable, DeployError, ManifestError

NAME = "litert"
LABEL = "LiteRT"
SUFFIXES = (".tflite",)
INSTALL = "pip install 'segcompress[litert]'"
PYTHON_ENV = "SEGCOMPRESS_LITERT_PYTHON"
ROOT = Path(__file__).resolve().parents[2]  # the folder that holds compress/ and deploy/
DEFAULT_VENV = ROOT / ".venv-litert"


def converter_python() -> Path | None:
    """The interpreter that converts (``$SEGCOMPRESS_LITERT_PYTHON``, else
    ``.venv-litert/bin/python`` when it exists), or None."""
    named = os.environ.get(PYTHON_ENV)
    if named:
        return Path(named)
    default = DEFAULT_VENV / "bin" / "python"
    return default if default.exists() else None


def build_unavailable() -> str | None:
    """Why a ``.tflite`` cannot be built and checked here (no converter environment, no
    interpreter), or None."""
    why = available("cpu")
    if why:
        return why
    python = converter_python()
    if python is None:
        return (f"{LABEL}: no converter environment: litert-torch cannot be installed beside "
                "the toolkit; run `bash scripts/setup_litert.sh` (a separate .venv-litert) or "
                f"set {PYTHON_ENV} to a Python that has torch, the toolkit and litert-torch")
    if not python.is_file():
        return f"{LABEL}: {PYTHON_ENV}={python}: no such interpreter"
    return None


def available(device: str) -> str | None:
    """Why a ``.tflite`` cannot run on ``device`` here (not the CPU, no interpreter), or
    None."""
    if str(device).lower() != "cpu":
        return f"{LABEL}: runs on the CPU here (XNNPACK), not {device}"
    if importlib.util.find_spec("ai_edge_litert") is None:
        return f"{LABEL}: the interpreter is not installed ({INSTALL})"
    return None


def convert_tflite(checkpoint: Path, dst: Path, size: tuple[int, int], batch_size: int = 1,
                   argmax: bool = False, calibration: Iterable[np.ndarray] | None = None,
                   threads: int | None = None) -> Path:
    """Convert ``checkpoint`` into ``dst`` in the converter environment (INT8 when
    ``calibration`` images, normalised float32 ``[3, H, W]``, are given).

    Raises:
        BackendUnavailable: see :func:`build_unavailable`.
        DeployError: the conversion failed (its last error line).
    """
    why = build_unavailable()
    if why:
        raise BackendUnavailable(f"export --litert: {why}")
    cmd = [str(converter_python()), "-m", "deploy.litert_convert", str(checkpoint), str(dst),
           str(size[0]), str(size[1]), str(batch_size)]
    if argmax:
        cmd.append("--argmax")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="segcompress-litert-") as tmp:
        if calibration is not None:
            calib = Path(tmp) / "calibration.npy"
            np.save(calib, np.stack([np.asarray(c, np.float32) for c in calibration]),
                    allow_pickle=False)
            cmd += ["--calibration", str(calib)]
        done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not dst.is_file():
        lines = [ln for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
        raise DeployError(f"export --litert: converting {dst.name} failed: "
                          f"{one_line(lines[-1] if lines else f'exit {done.returncode}', limit=MESSAGE_CHARS)}")
    return dst


class LiteRTRuntime(Runtime):
    """A ``.tflite`` model in the LiteRT interpreter (CPU, its fixed batch)."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None,
                 entry: dict | None = None) -> None:
        built = built_precision(BACKEND, path, spec, entry, device, precision)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.runner = self.interpreter.get_signature_runner()
        except Exception as e:  # noqa: BLE001 - a broken model: one line
            raise ManifestError(f"runtime: LiteRT cannot load {path}: "
                                f"{one_line(e, limit=MESSAGE_CHARS)}") from None
        inputs = self.runner.get_input_details()
        self.input_name = next(iter(inputs))
        self.input_detail = inputs[self.input_name]
        self.output_details = self.runner.get_output_details()
        self.fixed_batch = int(self.input_detail["shape"][0])
        super().__init__(path, spec, "cpu", built, {"delegate": "XNNPACK",
                                                   "fixed_batch": self.fixed_batch})

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            try:
                outs = self.runner(**{self.input_name: _quantize(x, self.input_detail)})
            except Exception as e:  # noqa: BLE001 - the interpreter's own errors, one line
                raise DeployError(f"runtime: LiteRT failed on {self.path} with input "
                                  f"{list(x.shape)}: {one_line(e, limit=MESSAGE_CHARS)}") from None
            ordered = [_dequantize(outs[k], self.output_details.get(k, {}))
                       for k in sorted(outs, key=_output_index)]
            return dict(zip(self.output_names, ordered))

        return in_batches(run, images, self.fixed_batch)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """The input as the model takes it: float32 as is, or an integer input (a fully
    quantized INT8 model) as ``round(x / scale) + zero_point``, clipped to its type."""
    dtype = np.dtype(detail.get("dtype", np.float32))
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    """An integer output back to float32 (``(y - zero_point) * scale``); others as they are."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.asarray(y).dtype.kind in "iu" and scale:
        return ((np.asarray(y, np.float32) - zero) * scale).astype(np.float32)
    return y


def _output_index(name: str) -> int:
    """``output_3`` -> 3: litert-torch names a signature's outputs in the model's order."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> LiteRTRuntime:
    """The spec and the precision come from the manifest entry."""
    return LiteRTRuntime(path, spec, device, threads, precision, entry)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("f32", "int8"),
                  devices=("cpu",), libraries=("ai_edge_litert.interpreter",),
                  available=available, load=load, role="compiled",
                  packages=("ai-edge-litert",), builds=("f32", "int8"))

