"""Depth targets: read from files (real data) or drawn for the synthetic scenes.

Folder layout for real depth data (documented in docs/multitask.md)::

    root/images/[split/]<name>.png|jpg      the frames
    root/depth/[split/]<name>.png           16-bit PNG, depth in millimetres, 0 = no value
                       <name>.npy           or float32 [H, W] in metres, 0 or NaN = no value
    root/masks/[split/]<name>.png           optional segmentation masks (with classes.txt)

A depth map has the image's height and width. Missing measurements (sparse LiDAR) are 0;
every loss and metric in :mod:`compress.depth` skips them.

Synthetic depth (:func:`synthetic_depth`): the synthetic scenes of
:class:`~compress.data.datasets.SyntheticSource` stand on a ground plane that recedes from
``near`` metres at the bottom row to ``far`` at the top; each object stands on the ground at
its lowest row and takes that row's depth (a cue a network can learn from the image).
:func:`lidar_sample` keeps a few scan lines of it, like a LiDAR projected into the camera.
Both are fully determined by ``(seed, index)`` and leave the images and masks unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.data.datasets import DataError

MAX_DEPTH_MM = 65_535


def read_depth(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A depth map in metres (float32 ``[H, W]``, 0 where there is no measurement).

    Raises:
        DataError: unreadable file, wrong dtype or rank, or a size other than ``shape``;
            one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: depth map missing")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy depth map ({e})") from None
        if depth.dtype.kind != "f":
            raise DataError(f"{path}: a .npy depth map holds floats in metres "
                            f"(got {depth.dtype})")
        depth = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    elif path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                raw = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable PNG depth map ({e})") from None
        if raw.dtype != np.uint16 and raw.dtype != np.int32:
            raise DataError(f"{path}: a PNG depth map is 16-bit millimetres (got "
                            f"{raw.dtype} {'x'.join(map(str, raw.shape))})")
        depth = raw.astype(np.float32) / 1000.0
    else:
        raise DataError(f"{path}: depth maps are .png (16-bit mm) or .npy (float metres)")
    if depth.ndim != 2:
        raise DataError(f"{path}: a depth map is one channel [H, W] (got shape "
                        f"{list(depth.shape)})")
    depth[depth < 0] = 0.0
    if shape is not None and depth.shape != tuple(shape):
        raise DataError(f"{path}: depth size {depth.shape[1]}x{depth.shape[0]} != image size "
                        f"{shape[1]}x{shape[0]}")
    return depth


def write_depth_png(path: str | Path, depth: np.ndarray) -> Path:
    """Write metres as a 16-bit millimetre PNG (0 stays "no value"; clipped at 65.535 m)."""
    from PIL import Image

    mm = np.clip(np.round(np.nan_to_num(depth) * 1000.0), 0, MAX_DEPTH_MM).astype(np.uint16)
    Image.fromarray(mm).save(path)
    return Path(path)


def synthetic_depth(source, i: int) -> np.ndarray:
    """Dense depth (metres, float32 ``[H, W]``) of synthetic scene ``i`` of ``source``."""
    _, _, regions = source.scene(i)
    h, w = source.size
    rng = np.random.default_rng([source.seed, i, 1])  # its own stream: images unchanged
    far, near = rng.uniform(15.0, 25.0), rng.uniform(2.0, 4.0)
    ground = (far + (near - far) * np.linspace(0.0, 1.0, h, dtype=np.float32))
    depth = np.repeat(ground[:, None], w, axis=1).astype(np.float32)
    for region in regions:
        rows = np.nonzero(region.any(axis=1))[0]
        if rows.size:
            depth[region] = ground[rows.max()]
    return depth


def lidar_sample(depth: np.ndarray, seed: int, i: int, lines: int = 24,
                 keep: float = 0.6) -> np.ndarray:
    """A sparse copy of ``depth``: ``lines`` scan rows over the lower 60 % of the image, a
    random ``keep`` share of each row's pixels; 0 elsewhere."""
    h, w = depth.shape
    rng = np.random.default_rng([seed, i, 2])
    rows = np.unique(np.linspace(int(h * 0.4), h - 1, lines).astype(int))
    sparse = np.zeros_like(depth)
    for r in rows:
        cols = rng.random(w) < keep
        sparse[r, cols] = depth[r, cols]
    return sparse
