"""Cached teacher outputs: run the frozen teacher once over the training set, then reuse.

Distillation normally pays a teacher forward pass on every step. With ``kd.cache: true``
:meth:`CachedTeacher.build` runs the teacher once over every training image (no
augmentation, resized to ``data.size``), keeps the logits in float16 at ``cache_scale`` of
that size in ``<run dir>/cache/``, and each step warps the stored logits with the same
scale, crop and flip as the augmented image (``TrainAugment.apply_geometry``).

What it trades: the teacher sees the whole, un-jittered image instead of the augmented
crop, and its logits are stored at reduced resolution. Only logits are cached, so
response KD, CWD on ``logits``, DIST and boundary KD work; feature KD, relation KD (and CWD
on feature levels) are refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from compress.config import ConfigError
from compress.data import normalize, resize_pair
from compress.io import atomic_write_json

CACHE_FORMAT = "segcompress-teacher-cache/1"
log = logging.getLogger("compress")


def _parts(train_set) -> list:
    """The :class:`SegDataset` parts of a training set (one, or a mixture's sources)."""
    return list(getattr(train_set, "parts", [train_set]))


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def cache_key(teacher, parts: list, scale: float) -> dict:
    """Everything the cached logits depend on; a cache is reused only if all of it matches."""
    names = hashlib.sha256()
    for p in parts:
        for i in range(len(p)):
            names.update(p.source.name(i).encode() + b"\0")
    return {
        "format": CACHE_FORMAT,
        "teacher_weights": _weights_digest(teacher.model),
        "teacher_mean": list(teacher.spec.mean),
        "teacher_std": list(teacher.spec.std),
        "student_norm": [list(map(float, p.mean)) + list(map(float, p.std)) for p in parts],
        "images": sum(len(p) for p in parts),
        "names": names.hexdigest(),
        "size": list(parts[0].size),
        "scale": float(scale),
    }


class CachedTeacher:
    """Stands in for :class:`compress.distill.Teacher` during training (same interface).

    ``teacher(images, batch)`` returns ``(logits [N, C, H, W], {})`` from the cache for a
    training batch (one that carries ``index`` and ``geometry``), and falls back to the
    live teacher for anything else (validation, pictures). ``predict`` always uses the
    live teacher.
    """

    def __init__(self, teacher, logits: np.ndarray, parts: list, cache_dir: Path) -> None:
        self.teacher, self.logits, self.parts, self.cache_dir = teacher, logits, parts, cache_dir
        self.offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()
        self.levels, self.spec, self.model = teacher.levels, teacher.spec, teacher.model

    @classmethod
    def build(cls, teacher, train_set, cache_dir: str | Path, scale: float = 0.5, *,
              batch_size: int = 8, show: bool = True) -> CachedTeacher:
        """Fill the cache (or reuse a matching one) and return the cached teacher.

        Args:
            teacher: a :class:`compress.distill.Teacher` with no feature levels.
            train_set: the training :class:`SegDataset` or mixture; its items must carry
                ``geometry`` (training augmentation) and ``index`` (global index).
            cache_dir: where ``logits.npy`` (float16 ``[N, C, h, w]``) and ``meta.json`` go.
            scale: stored resolution as a fraction of ``data.size``.

        Raises:
            ValueError: the teacher taps feature levels (feature KD needs the live teacher).
        """
        if teacher.levels:
            raise ConfigError(
                f"kd.cache stores teacher logits only, but this run also distils feature "
                f"level(s) {teacher.levels} (kd.feature / kd.relation / kd.cwd.levels): set "
                "kd.cache=false, or keep only the logit terms (response, CWD on 'logits', "
                "dist, boundary)")
        parts = _parts(train_set)
        cache_dir = Path(cache_dir)
        key = cache_key(teacher, parts, scale)
        rank, world = _dist()
        if rank == 0:
            t0 = time.perf_counter()
            if _load(cache_dir, key) is None:
                _fill(teacher, parts, cache_dir, key, scale, batch_size, show)
                log.info(f"teacher cache: {key['images']} images run once in "
                         f"{time.perf_counter() - t0:.1f}s -> {cache_dir}")
            else:
                log.info(f"teacher cache: reusing {cache_dir}")
        if world > 1:
            torch.distributed.barrier()
        logits = _load(cache_dir, key)
        if logits is None:
            raise RuntimeError(f"{cache_dir}: teacher cache missing after it was built")
        return cls(teacher, logits, parts, cache_dir)

    def _augment(self, index: int):
        k = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[k].augment

    def __call__(self, images: torch.Tensor, batch: dict | None = None):
        if batch is None or "geometry" not in batch:
            return self.teacher(images, batch)
        idx = batch["index"].tolist()
        # one read from the memmap, one copy to the device; the warp runs where the images are
        stored = torch.from_numpy(np.stack([self.logits[i] for i in idx]))
        stored = stored.to(images.device, non_blocking=True).float()
        out = []
        for j, i in enumerate(idx):
            # the stored logits cover the whole source image, so scaling them straight to
            # the augmentation's scaled size equals resizing to the source size first
            out.append(self._augment(i).apply_geometry(stored[j], batch["geometry"][j],
                                                       "bilinear", 0.0))
        return torch.stack(out), {}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.predict(images)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _load(cache_dir: Path, key: dict) -> np.ndarray | None:
    meta, data = cache_dir / "meta.json", cache_dir / "logits.npy"
    if not (meta.is_file() and data.is_file()):
        return None
    try:
        stored = json.loads(meta.read_text())
        if stored.get("key") != key:
            return None
        arr = np.load(data, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return arr if list(arr.shape) == stored.get("shape") else None


@torch.no_grad()
def _fill(teacher, parts: list, cache_dir: Path, key: dict, scale: float, batch_size: int,
          show: bool) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "meta.json").unlink(missing_ok=True)  # a half-built cache never looks valid
    size = tuple(parts[0].size)
    small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    total = sum(len(p) for p in parts)
    tmp = cache_dir / "logits.npy.tmp"
    arr = None
    bar = tqdm(total=total, desc="teacher cache", disable=not show, leave=False)
    g = 0
    try:
        for p in parts:
            for start in range(0, len(p), batch_size):
                idx = range(start, min(start + batch_size, len(p)))
                imgs = [resize_pair(p.source.load(i)[0], None, size)[0] for i in idx]
                x = torch.from_numpy(normalize(np.stack(imgs), p.mean, p.std)).to(teacher.device)
                logits = teacher(x)[0].float()
                logits = F.interpolate(logits, size=small, mode="bilinear", align_corners=False,
                                       antialias=True)
                if arr is None:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                                    shape=(total, logits.shape[1], *small))
                arr[g : g + len(idx)] = logits.cpu().numpy().astype(np.float16)
                g += len(idx)
                bar.update(len(idx))
        bar.close()
        arr.flush()
        shape = list(arr.shape)
        del arr
        os.replace(tmp, cache_dir / "logits.npy")
    except BaseException:  # a failed build leaves no half-written logits in the run dir
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_json(cache_dir / "meta.json", {"key": key, "shape": shape, "dtype": "float16"})
