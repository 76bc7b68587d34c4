"""Published dataset layouts, read as their projects ship them: Cityscapes, PASCAL VOC
2012 and ADE20K (SceneParsing).

Each source takes the dataset root (the folder the archive unpacks to, or its parent) and
a split, and returns a :class:`PairSource` whose label table turns the layout's mask values
into the official train classes, the layout's ignore values into the run's ``ignore_index``.
"""

from __future__ import annotations

from pathlib import Path

from compress.data.datasets import IMAGE_EXTS, DataError, PairSource, read_data_text
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
