"""The one device check: is a CUDA device asked for where torch sees no GPU?

compress (training, eval), deploy (each backend's ``available(device)``) and bench (the
``--device`` option) all ask here, so "no GPU" means one thing everywhere. torch is
imported inside the functions: ``import deploy`` stays free of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compress.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("cpu", "cuda")  # the kinds a ``--device`` option takes (``cuda:N`` included)


def is_cuda(device: str) -> bool:
    """Whether ``device`` names a CUDA device (``cuda``, ``cuda:N``)."""
    return str(device).startswith("cuda")


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU here."""
    import torch

    return torch.cuda.is_available()


def cuda_missing(label: str, device: str) -> str | None:
    """``"<label>: no GPU"`` when ``device`` is CUDA and torch sees none, else None."""
    if not is_cuda(device):
        return None
    return None if cuda_available() else f"{label}: no GPU"


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a device that is neither ``cpu`` nor ``cuda[:N]``, or CUDA without a GPU.

    Raises:
        InputError: one line naming ``option`` and what to use instead.
    """
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise InputError(f"{option} {device!r}: expected {' or '.join(DEVICES)}")
    if is_cuda(device) and not cuda_available():
        raise InputError(
            f"{option} cuda: no CUDA GPU is visible here "
            "(torch.cuda.is_available() is False); use --device cpu"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error.

    Raises:
        InputError: a CUDA device asked for where there is none.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if is_cuda(name) and not cuda_available():
        raise InputError(f"device {name!r} requested but no CUDA GPU is available here")
    return torch.device(name)
