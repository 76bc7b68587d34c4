"""Where a run computes: the device a recipe's ``train.device`` names, and the process's
place in a ``torchrun`` job."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from compress.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA GPU is available here")
    return torch.device(name)


def distributed_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_device(name: str, threads: int | None = None, world: int = 1) -> torch.device:
    """The device a run trains on (:func:`resolve_device`; under ``torchrun`` the rank's
    own GPU, after joining the process group), with ``threads`` CPU threads when set and
    denormal floats flushed to zero."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if threads:
        torch.set_num_threads(threads)
    # denormal floats (tiny gradients late in training) slow CPU kernels by 10x or more
    torch.set_flush_denormal(True)
    return device
