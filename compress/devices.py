"""Devices: the one device check (is a CUDA device asked for where torch sees no GPU?),
the device a recipe's ``train.device`` names, and the process's place in a ``torchrun`` job.

compress (training, eval), deploy (each backend's ``available(device)``) and bench (the
``--device`` option) all ask here, so "no GPU" means one thing everywhere. torch is
imported inside the functions: ``import deploy`` stays free of it.
"""

from __future__ import annotations

import os
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


def distributed_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_device(name: str, threads: int | None = None, world: int = 1) -> torch.device:
    """The device a run trains on (:func:`resolve_device`; under ``torchrun`` the rank's
    own GPU, after joining the process group), with ``threads`` CPU threads when set and
    denormal floats flushed to zero."""
    import torch
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda_available() else "gloo")
    device = resolve_device(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(threads)
    # denormal floats (tiny gradients late in training) slow CPU kernels by 10x or more
    torch.set_flush_denormal(True)
    return device
