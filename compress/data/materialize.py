"""Write the synthetic scenes to disk in the folder layout (images, masks, depth), so the
offline workflows have a "real" folder to pseudo-label and mix: a stand-in for a camera
dataset (masks) or a LiDAR depth dataset (depth only)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from compress.data.datasets import DataError, SyntheticSource
from compress.data.depth import lidar_sample, synthetic_depth, write_depth_png
from compress.io import current_umask
from compress.outdir import new_output


def write_synthetic(out: str | Path, *, length: int, size: tuple[int, int], seed: int,
                    splits: tuple[str, ...] = ("train", "val"), depth: str = "none",
                    masks: bool = True, show: bool = True) -> dict:
    """Write ``length`` scenes per split under ``out`` (folder layout, split subfolders).

    Splits differ by seed as in ``create_source`` (train ``seed``, others ``seed + 1000``).
    ``depth``: ``none``, ``dense`` or ``lidar`` (16-bit PNG millimetres in ``depth/``);
    ``masks=False`` writes no masks (a depth-only dataset). The folder is built under a
    temporary name and moved into place, so it is never half written.

    Raises:
        DataError: a bad depth mode / length.
        OutputError: ``out`` exists, is a dangling symlink or lies under a file.
    """
    out = new_output(out, "synthetic: --out")
    if depth not in ("none", "dense", "lidar"):
        raise DataError(f"unknown depth mode {depth!r}; valid: none, dense, lidar")
    if length < 1:
        raise DataError(f"--length must be >= 1 (got {length})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "classes.txt").write_text("\n".join(SyntheticSource.class_names) + "\n")
        for split in splits:
            src = SyntheticSource(length, size, seed if split == "train" else seed + 1000)
            dirs = {"images": tmp / "images" / split}
            if masks:
                dirs["masks"] = tmp / "masks" / split
            if depth != "none":
                dirs["depth"] = tmp / "depth" / split
            for d in dirs.values():
                d.mkdir(parents=True)
            for i in tqdm(range(length), desc=f"synthetic {split}", disable=not show):
                image, mask, name = src.load(i)
                Image.fromarray(image).save(dirs["images"] / f"{name}.png")
                if masks:
                    Image.fromarray(mask.astype(np.uint8)).save(dirs["masks"] / f"{name}.png")
                if depth != "none":
                    d = synthetic_depth(src, i)
                    write_depth_png(dirs["depth"] / f"{name}.png",
                                    lidar_sample(d, src.seed, i) if depth == "lidar" else d)
        os.chmod(tmp, 0o777 & ~current_umask())
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "splits": list(splits), "length": length, "depth": depth,
            "masks": masks, "size": list(size), "seed": seed}
