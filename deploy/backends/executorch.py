"""ExecuTorch: the student lowered to the XNNPACK delegate, a ``.pte`` program (what
phones and ARM boards run), f32 and INT8.

``compress export --executorch`` traces the student with ``torch.export`` at the export's
batch and size, lowers it with ``to_edge_transform_and_lower(..., [XnnpackPartitioner()])``
and writes ``model.pte``. With ``--int8`` it also writes ``model_int8.pte``: PT2E
quantisation with the XNNPACK quantizer (symmetric, per-channel weights, static
activations), calibrated on the same images as the NNCF path, then lowered the same way.
Both run here with ExecuTorch's Python runtime (``executorch.runtime``), on the CPU.

The ``executorch`` extra installs it (``pip install 'segcompress[executorch]'``); without
it ``--executorch`` stops before any work in one line. A ``.pte`` carries no segcompress
spec: it is loaded beside the ``manifest.json`` of the export that wrote it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from compress.errors import one_line
from compress.spec import ModelSpec
from deploy.arrays import fixed_batches, in_batches
from deploy.backends.base import Backend, Runtime, built_precision
from deploy.errors import MESSAGE_CHARS, DeployError, ManifestError

NAME = "executorch"
LABEL = "ExecuTorch"
SUFFIXES = (".pte",)
INSTALL = "pip install 'segcompress[executorch]'"


def available(device: str) -> str | None:
    """Why a ``.pte`` cannot run on ``device`` here (not installed, not the CPU), or None."""
    if str(device).lower() != "cpu":
        return f"{LABEL}: runs on the CPU here (XNNPACK), not {device}"
    if importlib.util.find_spec("executorch") is None:
        return f"{LABEL}: not installed ({INSTALL})"
    return None


def build_pte(head, dst: Path, size: tuple[int, int], batch_size: int = 1,
              calibration: Iterable[np.ndarray] | None = None) -> Path:
    """Lower ``head`` (an eval-mode module: float32 ``[batch_size, 3, H, W]`` in) to an
    XNNPACK ``.pte`` at ``dst``; with ``calibration`` (normalised float32 ``[3, H, W]`` or
    ``[N, 3, H, W]`` arrays), INT8 by PT2E with the XNNPACK quantizer first.

    Returns:
        ``dst``.

    Raises:
        DeployError: export, quantisation or lowering failed (their message in one line).
    """
    import torch

    why = available("cpu")
    if why:
        raise DeployError(f"export --executorch: {why}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    x = torch.randn(batch_size, 3, *size)
    try:
        with torch.no_grad():
            if calibration is not None:  # an exported module (no .eval()): already eval
                program = torch.export.export(_quantized(head, x, calibration, batch_size), (x,))
            else:
                program = torch.export.export(head.eval(), (x,))
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            dst.write_bytes(lowered.to_executorch().buffer)
    except Exception as e:  # noqa: BLE001 - torch.export / ExecuTorch raise many types
        raise DeployError(f"export --executorch: lowering {dst.name} failed: "
                          f"{one_line(e, limit=MESSAGE_CHARS)}") from None
    return dst


def _quantized(head, x, calibration: Iterable[np.ndarray], batch_size: int):
    """PT2E: prepare with the XNNPACK quantizer, run the calibration images, convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(head.eval(), (x,)).module(), quantizer)
    for batch in fixed_batches(calibration, batch_size):
        prepared(torch.from_numpy(batch))
    return convert_pt2e(prepared)


class ExecuTorchRuntime(Runtime):
    """A ``.pte`` program in ExecuTorch's Python runtime (CPU, its fixed batch)."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None,
                 entry: dict | None = None) -> None:
        built = built_precision(BACKEND, path, spec, entry, device, precision)
        import torch
        from executorch.runtime import Runtime as EtRuntime

        if threads:
            _set_threads(threads)
        try:
            self.method = EtRuntime.get().load_program(str(path)).load_method("forward")
        except Exception as e:  # noqa: BLE001 - a broken program: one line
            raise ManifestError(f"runtime: ExecuTorch cannot load {path}: "
                                f"{one_line(e, limit=MESSAGE_CHARS)}") from None
        self._torch = torch
        batch = (entry.get("input_shape") or [1])[0]  # traced at one batch: always fixed
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else 1
        super().__init__(path, spec, "cpu", built, {"delegate": "XNNPACK",
                                                   "fixed_batch": self.fixed_batch})

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            try:
                outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(x))])
            except Exception as e:  # noqa: BLE001 - ExecuTorch's own errors, one line
                raise DeployError(f"runtime: ExecuTorch failed on {self.path} with input "
                                  f"{list(x.shape)}: {one_line(e, limit=MESSAGE_CHARS)}") from None
            return {n: o.numpy() for n, o in zip(self.output_names, outs)}

        return in_batches(run, images, self.fixed_batch)


def _set_threads(threads: int) -> None:
    """XNNPACK's thread pool size (process-wide, like torch's)."""
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    except ImportError:  # an ExecuTorch without the call: its own default
        return
    _unsafe_reset_threadpool(int(threads))


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> ExecuTorchRuntime:
    """The spec, the precision and the fixed batch come from the manifest entry."""
    return ExecuTorchRuntime(path, spec, device, threads, precision, entry)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("f32", "int8"),
                  devices=("cpu",), libraries=("executorch.runtime",), available=available,
                  load=load, role="compiled", packages=("executorch",),
                  builds=("f32", "int8"))
