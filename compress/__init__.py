"""compress: distil compact segmentation students from big teachers.

Public API::

    from compress import load_model
    model = load_model("artifacts/runs/.../checkpoints/best.pt")  # eval-mode nn.Module
    logits = model(images)  # [N, 3, H, W] normalised -> [N, C, H, W]

The names load on first use, so ``import compress.errors`` (which deploy's errors build
on) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ConfigError": "compress.config",
    "ModelSpec": "compress.spec",
    "RunConfig": "compress.config",
    "load_config": "compress.config",
    "create_model": "compress.models",
    "load_model": "compress.models",
    "make_spec": "compress.models",
    "save_checkpoint": "compress.models",
}

__all__ = ["ConfigError", "ModelSpec", "RunConfig", "create_model", "load_config", "load_model",
           "make_spec", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
