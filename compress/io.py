"""Atomic writes and safe loads: nothing half-written ever looks valid."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    """A file that cannot be loaded safely (corrupt, truncated, or carrying code)."""


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then fsync and rename onto ``path``.

    A crash or an exception in the writer leaves the previous file untouched and no
    temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: truncated/corrupt file, or a pickle that carries code (which is
            refused without being run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "unpickling refused"
        if "Weights only load failed" in str(e) or "Unsupported" in str(e):
            raise UnsafeFileError(
                f"{path}: refused: the file holds Python objects beyond tensors and plain "
                "values (possibly code); it was not executed"
            ) from None
        raise UnsafeFileError(f"{path}: corrupt checkpoint ({msg})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsafeFileError(f"{path}: corrupt or truncated checkpoint ({msg})") from None
