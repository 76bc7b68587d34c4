"""Array helpers every backend shares: running a fixed-batch model on any number of
images, and class ids from a model's outputs. No backend import here, so the backends,
the runtimes and the exporters can all use them without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def in_batches(run: Callable[[np.ndarray], Any], images: np.ndarray,
               fixed_batch: int | None) -> Any:
    """Call ``run`` on chunks of ``fixed_batch`` images (padding the last chunk by
    repeating its last image) and concatenate the outputs; one call when the model takes
    any batch (``fixed_batch`` None) or exactly this one. ``run`` returns an array or a
    dict of named arrays (a multi-output model); each is concatenated on its own."""
    n = images.shape[0]
    if fixed_batch is None or fixed_batch == n:
        return run(images)
    outs = []
    for i in range(0, n, fixed_batch):
        chunk = images[i:i + fixed_batch]
        k = chunk.shape[0]
        if k < fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - k, 0)])
        out = run(chunk)
        outs.append({name: v[:k] for name, v in out.items()} if isinstance(out, dict)
                    else out[:k])
    if isinstance(outs[0], dict):
        return {name: np.concatenate([o[name] for o in outs]) for name in outs[0]}
    return np.concatenate(outs)


def class_ids(out: np.ndarray) -> np.ndarray:
    """Class ids ``[N, H, W]`` from logits ``[N, C, H, W]`` (or ids passed through)."""
    out = np.asarray(out)
    if out.ndim == 3:
        return out.astype(np.int64)
    if out.shape[1] == 1:
        return (out[:, 0] > 0).astype(np.int64)
    return out.argmax(1)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """The source index each of ``dst`` output positions takes in a nearest resize of a
    side of ``src`` positions: ``floor(i * src / dst)`` (PyTorch's ``nearest`` rule), the
    one rule the Python post-processing and the frame-to-map graph both use."""
    return np.minimum((np.arange(dst) * (src / dst)).astype(np.int64), src - 1)


def resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class ids ``[N, h, w]`` -> ``[N, H, W]`` by :func:`nearest_indices` (unchanged
    when already that size)."""
    H, W = size
    h, w = ids.shape[-2:]
    if (h, w) == (H, W):
        return ids
    return ids[:, nearest_indices(h, H)[:, None], nearest_indices(w, W)[None, :]]


def fixed_batches(images, batch: int):
    """``[batch, ...]`` float32 stacks of ``images`` (arrays ``[3, H, W]`` or
    ``[N, 3, H, W]``), the last one filled by repeating its last image: calibration for a
    model traced at one batch size."""
    pending: list[np.ndarray] = []
    for image in images:
        a = np.asarray(image, np.float32)
        pending.extend(a if a.ndim == 4 else a[None])
        while len(pending) >= batch:
            yield np.stack(pending[:batch])
            pending = pending[batch:]
    if pending:
        yield np.stack(pending + [pending[-1]] * (batch - len(pending)))
