"""AOTInductor: PyTorch's own compiled deploy path, a ``.pt2`` package.

``compress export --aoti`` traces the student with ``torch.export`` (the batch dimension
dynamic unless ``--static-batch``) and compiles it ahead of time with
``torch._inductor.aoti_compile_and_package`` into ``model.pt2`` (C++ and a shared
library inside; CPU here, ``--aoti-device cuda`` on a GPU), loaded with
``torch._inductor.aoti_load_package``. It needs a C++ compiler when compiling, none when
loading, and no package beyond torch.

A ``.pt2`` package holds compiled native code that runs when it is loaded, so it is
loaded only beside the ``manifest.json`` of the export that wrote it, listed there with
its sha256 (checked by :func:`deploy.runtime.load_runtime`) and the device it was built
for: run only packages you built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from compress.devices import cuda_missing
from compress.errors import InputError, one_line
from compress.spec import ModelSpec
from deploy.backends.base import Backend, Runtime
from deploy.errors import MESSAGE_CHARS, BackendUnavailable, DeployError, ManifestError

NAME = "aoti"
LABEL = "AOTInductor"
SUFFIXES = (".pt2",)
COMPILERS = ("c++", "g++", "clang++")


def build_unavailable(device: str) -> str | None:
    """Why a ``.pt2`` cannot be compiled for ``device`` here (no GPU, no C++ compiler), or
    None."""
    if not any(shutil.which(c) for c in COMPILERS):
        return (f"{LABEL}: no C++ compiler ({', '.join(COMPILERS)}) on PATH: it compiles the "
                "model to C++ (install g++)")
    return cuda_missing(LABEL, device)


def compile_pt2(head, dst: Path, size: tuple[int, int], batch_size: int = 1,
                dynamic_batch: bool = True, device: str = "cpu") -> Path:
    """Export ``head`` (an eval-mode module: float32 ``[N, 3, H, W]`` in) and compile it
    into the package ``dst`` for ``device``.

    Raises:
        BackendUnavailable: see :func:`build_unavailable`.
        DeployError: torch.export or Inductor failed (their message in one line).
    """
    import torch

    why = build_unavailable(device)
    if why:
        raise BackendUnavailable(f"export --aoti: {why}")
    # torch.export specialises a batch of 1 to a constant: trace with 2 when it is dynamic
    n = max(batch_size, 2) if dynamic_batch else batch_size
    x = torch.randn(n, 3, *size, device=device)
    shapes = ({0: torch.export.Dim.AUTO},) if dynamic_batch else None
    try:
        with torch.no_grad():
            program = torch.export.export(head.to(device).eval(), (x,), dynamic_shapes=shapes)
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(dst))
    except Exception as e:  # noqa: BLE001 - torch.export / Inductor raise many types
        raise DeployError(f"export --aoti: compiling {dst.name} failed: "
                          f"{one_line(e, limit=MESSAGE_CHARS)}") from None
    return Path(path)


class AotiRuntime(Runtime):
    """A ``.pt2`` package (f32) on the device it was compiled for."""

    backend = NAME

    def __init__(self, path: Path, spec: ModelSpec | None, device: str = "cpu",
                 threads: int | None = None, precision: str | None = None,
                 built_for: str | None = None) -> None:
        import torch

        if spec is None or built_for is None:
            raise ManifestError(f"runtime: {path}: a .pt2 package holds compiled native code; "
                                "it is loaded only beside the manifest.json of the segcompress "
                                "export that wrote it (listed there with its sha256)")
        if precision not in (None, "f32"):
            raise InputError(f"runtime: {path.name}: AOTInductor packages run f32 only, not "
                             f"{precision}")
        kind = "cuda" if str(device).startswith("cuda") else "cpu"
        if kind != built_for:
            raise InputError(f"runtime: {path.name} was compiled for {built_for}, not {device}: "
                             f"export again with --aoti-device {kind}")
        if threads:
            torch.set_num_threads(threads)  # process-wide, as for the torch runtime
        self._torch = torch
        try:
            self.runner = torch._inductor.aoti_load_package(str(path))
        except Exception as e:  # noqa: BLE001 - a broken package: one line
            raise ManifestError(f"runtime: cannot load {path}: "
                                f"{one_line(e, limit=MESSAGE_CHARS)}") from None
        super().__init__(path, spec, str(device), "f32", {"compiled_for": built_for})

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            out = self.runner(torch.from_numpy(images).to(self.device))
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return {n: o.cpu().numpy() for n, o in zip(self.output_names, outs)}


def available(device: str) -> str | None:
    """Why a ``.pt2`` cannot run on ``device`` here (a CUDA device without a GPU), or None."""
    return cuda_missing(LABEL, device)


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> AotiRuntime:
    """The spec and the device it was built for come from the manifest entry."""
    built_for = ((entry or {}).get("aoti") or {}).get("device")
    return AotiRuntime(path, spec, device, threads, precision, built_for)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("f32",),
                  devices=("cpu", "cuda"), libraries=("torch",), available=available,
                  load=load, role="compiled", packages=("torch",), builds=("f32",))
