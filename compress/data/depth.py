"""Depth targets: read from files (real data) or drawn for the synthetic scenes.

Folder layout for real depth data (documented in docs/multitask.md)::

    root/images/[split/]<name>.png|jpg      the frames
    root/depth/[split/]<name>.png           16-bit PNG, depth in millimetres, 0 = no value
                       <name>.npy           or float32 [H, W] in metres, 0 or NaN = no value
    root/masks/[split/]<name>.png           optional segmentation masks (with classes.txt)

A depth map has the image's height and width. Missing measurements (sparse LiDAR) are 0;
every depth loss (:mod:`compress.depth_losses`) and metric (:class:`compress.metrics.DepthMeter`) skips them.

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


def read_depth(path: str | Path, shape: tuple[int, int] | None = None,
               png_scale: float = 1000.0) -> np.ndarray:
    """A depth map in metres (float32 ``[H, W]``, 0 where there is no measurement).

    A 16-bit PNG holds ``metres * png_scale``: millimetres (1000) in the folder layout,
    KITTI's 256 (``data_depth_annotated``).

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
            unit = "millimetres" if png_scale == 1000.0 else f"metres x {png_scale:g}"
            raise DataError(f"{path}: a PNG depth map is 16-bit {unit} (got "
                            f"{raw.dtype} {'x'.join(map(str, raw.shape))})")
        depth = raw.astype(np.float32) / png_scale
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


DEPTH_MODES = ("none", "dense", "lidar", "files")  # dense / lidar: drawn for synthetic scenes


class DepthSource:
    """A source whose samples also carry depth (:meth:`load_depth`), and optionally lose
    their masks (``masks=False``: a depth-only source, like KITTI depth without
    segmentation labels).

    ``depth``: ``none`` (zeros: masks only dropped), ``dense`` or ``lidar`` for synthetic scenes (:func:`synthetic_depth`,
    :func:`lidar_sample`); ``files`` for a folder layout (``root/depth/[split/]``).
    """

    def __init__(self, base, depth: str, *, masks: bool = True,
                 depth_dir: Path | None = None) -> None:
        if depth not in DEPTH_MODES:
            raise DataError(f"unknown depth mode {depth!r}; valid: none, dense, lidar "
                            "(synthetic), files (a folder's depth/)")
        if depth == "files" and (depth_dir is None or not depth_dir.is_dir()):
            raise DataError(f"{depth_dir}: no depth/ folder (16-bit PNG millimetres or .npy "
                            "metres, named like the images)")
        self.base, self.depth, self.masks, self.depth_dir = base, depth, masks, depth_dir
        self.class_names, self.ignore_index = base.class_names, base.ignore_index
        self.where = getattr(base, "where", str(depth_dir or "synthetic"))

    def __len__(self) -> int:
        return len(self.base)

    def name(self, i: int) -> str:
        return self.base.name(i)

    def load(self, i: int):
        image, mask, name = self.base.load(i)
        return image, (mask if self.masks else None), name

    def load_depth(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        """Depth of sample ``i`` in metres (0 where unmeasured), ``shape`` = image (H, W)."""
        if self.depth == "none":
            return np.zeros(shape, np.float32)
        if self.depth == "files":
            name = self.base.name(i)
            for suffix in (".png", ".npy"):
                path = self.depth_dir / f"{name}{suffix}"
                if path.is_file():
                    return read_depth(path, shape)
            raise DataError(f"{self.depth_dir}: no depth map for {name} ({name}.png or "
                            f"{name}.npy)")
        dense = synthetic_depth(self.base, i)
        return lidar_sample(dense, self.base.seed, i) if self.depth == "lidar" else dense


def depth_dir_of(root: str | Path, split: str) -> Path:
    """``root/depth/split`` when it exists, else ``root/depth``."""
    d = Path(root) / "depth"
    return d / split if (d / split).is_dir() else d
