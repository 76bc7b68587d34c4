"""PyTorch: a segcompress checkpoint (``.pt``/``.pth``) run as it was trained, in f32."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from compress.devices import cuda_missing
from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.backends.base import Backend, Runtime

NAME = "torch"
LABEL = "PyTorch"
SUFFIXES = (".pt", ".pth")


class TorchRuntime(Runtime):
    """A segcompress checkpoint in PyTorch (f32)."""

    backend = NAME

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None) -> None:
        import torch

        from compress.models import load_model

        if precision not in (None, "f32"):
            raise InputError(f"runtime: {path.name}: the torch runtime runs f32 only, not "
                             f"{precision}; export it (compress export) for other precisions")
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model setting
        self._torch = torch
        self.model, spec = load_model(path, device=device, return_spec=True)
        super().__init__(path, replace(spec, output="logits"), str(device), "f32")

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self._torch.no_grad():
            x = self._torch.from_numpy(images).to(self.device)
            out = self.model(x)
            if not isinstance(out, dict):  # a single-task model: its logits
                out = {self.output_names[0]: out}
            return {k: v.float().cpu().numpy() for k, v in out.items()}

    def device_call(self):
        if not str(self.device).startswith("cuda"):
            return None
        torch = self._torch

        def upload(images: np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device)

        def forward(x):
            with torch.no_grad():
                return self.model(x)

        return upload, forward


def available(device: str) -> str | None:
    """Why PyTorch cannot run on ``device`` here (a CUDA device without a GPU), or None."""
    return cuda_missing(LABEL, device)


def load(path: Path, spec: ModelSpec | None, entry: dict | None, device: str,
         threads: int | None, precision: str | None) -> TorchRuntime:
    """A checkpoint carries its own spec: a manifest's is not needed."""
    return TorchRuntime(path, device, threads, precision)


BACKEND = Backend(name=NAME, label=LABEL, suffixes=SUFFIXES, precisions=("f32",),
                  devices=("cpu", "cuda"), libraries=("segmentation_models_pytorch", "timm"),
                  available=available, load=load, role="checkpoint", packages=("torch",),
                  builds=("f32",))
