"""Published dataset layouts, read as their projects ship them: Cityscapes, PASCAL VOC
2012, ADE20K (SceneParsing) and, for depth, KITTI's annotated depth maps.

Each source takes the dataset root (the folder the archive unpacks to, or its parent) and
a split, and returns a :class:`PairSource` whose label table turns the layout's mask values
into the official train classes, the layout's ignore values into the run's ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.data.datasets import IMAGE_EXTS, DataError, PairSource, read_data_text
from compress.data.depth import read_depth
from compress.data.labels import (
    ADE20K_CLASSES,
    ADE20K_LABELS,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_IDS,
    CITYSCAPES_TRAIN_IDS,
    VOC_CLASSES,
    VOC_LABELS,
)

# the config's split names (train / val) -> ADE20K's folders; other names pass as they are
ADE20K_SPLITS = {"train": "training", "val": "validation"}


def _dataset_root(root: str | Path, name: str, marker: str, below: tuple[str, ...]) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of the folders ``below`` it
    that the published archive unpacks to."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name} root not found: {root}")
    for sub in ("", *below):
        if (root / sub / marker).is_dir():
            return root / sub
    where = " or ".join(f"{root / sub}/{marker}/" for sub in ("", *below))
    raise DataError(f"{root}: not a {name} root (no {where})")


def _splits(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ", ".join(names) or "none"


def cityscapes_source(root: str | Path, split: str, ignore_index: int = 255) -> PairSource:
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (the 34 label ids mapped to the 19
    train classes), or ``*_gtFine_labelTrainIds.png`` where cityscapesscripts made one."""
    root = _dataset_root(root, "Cityscapes", "leftImg8bit", ())
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for d in (img_dir, gt_dir):
        if not d.is_dir():
            raise DataError(f"{d}: Cityscapes split {split!r} not found (splits in "
                            f"{d.parent}: {_splits(d.parent)})")
    pairs: list[tuple[Path, Path | None]] = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = gt_dir / img.parent.name / img.name.removesuffix("_leftImg8bit.png")
        train_ids = Path(f"{stem}_gtFine_labelTrainIds.png")
        pairs.append((img, train_ids if train_ids.is_file() else
                      Path(f"{stem}_gtFine_labelIds.png")))
    return PairSource(pairs, list(CITYSCAPES_CLASSES), ignore_index,
                      f"{img_dir}/<city>/*_leftImg8bit.png",
                      (CITYSCAPES_TRAIN_IDS, CITYSCAPES_LABEL_IDS))


def voc_source(root: str | Path, split: str, ignore_index: int = 255) -> PairSource:
    """PASCAL VOC 2012 segmentation: ``ImageSets/Segmentation/<split>.txt`` lists the
    frames of ``JPEGImages/<id>.jpg``, whose masks ``SegmentationClass/<id>.png`` are
    palette PNGs holding the 21 class indices (255: object borders, ignored)."""
    root = _dataset_root(root, "PASCAL VOC", "JPEGImages", ("VOC2012", "VOCdevkit/VOC2012"))
    lists = root / "ImageSets" / "Segmentation"
    listing = lists / f"{split}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        raise DataError(f"{listing}: VOC split list not found (lists here: "
                        f"{', '.join(have) or 'none'})")
    ids = [ln.strip() for ln in read_data_text(listing).splitlines() if ln.strip()]
    pairs: list[tuple[Path, Path | None]] = [
        (root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
        for i in ids]
    return PairSource(pairs, list(VOC_CLASSES), ignore_index, str(listing), (VOC_LABELS,))


def ade20k_source(root: str | Path, split: str, ignore_index: int = 255) -> PairSource:
    """ADE20K SceneParsing (``ADEChallengeData2016``): ``images/<folder>/*.jpg`` with
    ``annotations/<folder>/*.png``; split ``train`` reads ``training``, ``val``
    ``validation``. Annotation 0 ("other") is ignored, 1..150 are the classes 0..149."""
    root = _dataset_root(root, "ADE20K", "images", ("ADEChallengeData2016",))
    folder = ADE20K_SPLITS.get(split, split)
    img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise DataError(f"{d}: ADE20K split {split!r} not found (folders in "
                            f"{d.parent}: {_splits(d.parent)}; train reads training, "
                            "val validation)")
    pairs: list[tuple[Path, Path | None]] = [
        (p, ann_dir / f"{p.stem}.png") for p in sorted(img_dir.iterdir())
        if p.suffix.lower() in IMAGE_EXTS]
    return PairSource(pairs, list(ADE20K_CLASSES), ignore_index, str(img_dir),
                      (ADE20K_LABELS,))


KITTI_DEPTH_SCALE = 256.0  # data_depth_annotated PNGs: metres = value / 256, 0 = no value
KITTI_DEPTH = "data_depth_annotated"


class KittiDepthSource(PairSource):
    """KITTI frames with their annotated depth and no segmentation masks (a depth-only
    source): each frame is named ``<drive>_<frame>`` (frame numbers repeat across
    drives)."""

    def __init__(self, frames: list[tuple[str, Path, Path]], class_names: list[str],
                 ignore_index: int, where: str) -> None:
        super().__init__([(rgb, None) for _, rgb, _ in frames], class_names, ignore_index,
                         where)
        self.names = [n for n, _, _ in frames]
        self.depths = [d for _, _, d in frames]
        self.masks = False

    def name(self, i: int) -> str:
        return self.names[i]

    def load(self, i: int) -> tuple[np.ndarray, None, str]:
        image, _, _ = super().load(i)
        return image, None, self.names[i]

    def load_depth(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        """Depth of frame ``i`` in metres (0 where the LiDAR measured nothing)."""
        return read_depth(self.depths[i], shape, png_scale=KITTI_DEPTH_SCALE)


def kitti_depth_source(root: str | Path, split: str, ignore_index: int = 255,
                       class_names: list[str] | None = None) -> KittiDepthSource:
    """KITTI depth (``data_depth_annotated/<split>/<drive>/proj_depth/groundtruth/
    image_02/*.png``, 16-bit, metres x 256) with the left colour frames of the raw drives
    (``<date>/<drive>/image_02/data/<frame>.png``, ``<date>`` the drive's first 10
    characters, beside ``data_depth_annotated`` or under ``raw/``). ``class_names``: the
    run's classes (the frames have no masks: segmentation terms see ignored pixels)."""
    root = _dataset_root(root, "KITTI depth", KITTI_DEPTH, ())
    ann = root / KITTI_DEPTH / split
    if not ann.is_dir():
        raise DataError(f"{ann}: KITTI depth split {split!r} not found (splits in "
                        f"{ann.parent}: {_splits(ann.parent)})")
    frames = []
    for gt in sorted(ann.glob("*/proj_depth/groundtruth/image_02/*.png")):
        drive = gt.parents[3].name
        places = [root / drive[:10] / drive, root / "raw" / drive[:10] / drive]
        rgb = next((d / "image_02" / "data" / gt.name for d in places
                    if (d / "image_02" / "data" / gt.name).is_file()),
                   places[0] / "image_02" / "data" / gt.name)  # refused below, named
        frames.append((f"{drive}_{gt.stem}", rgb, gt))
    if not frames:
        raise DataError(f"{ann}: no <drive>/proj_depth/groundtruth/image_02/*.png")
    missing = [(rgb, gt) for _, rgb, gt in frames if not rgb.is_file()]
    if missing:
        rgb, gt = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{rgb}: colour frame missing for {gt.name} of "
                        f"{gt.parents[3].name}{more}: unpack the raw drive beside "
                        f"{KITTI_DEPTH}/ (or under raw/)")
    return KittiDepthSource(frames, list(class_names or []), ignore_index,
                            f"{ann}/<drive>/proj_depth/groundtruth/image_02")
