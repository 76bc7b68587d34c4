"""Datasets: CamVid (SegNet layout), a generic images/masks folder, and procedural synthetic.

Every dataset yields raw ``(image uint8 [H, W, 3], mask int64 [H, W], name)`` through
:meth:`load`; :class:`SegDataset` turns that into normalised tensors for a split.
Bad files stop with :class:`DataError` naming the file.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from compress.data.transforms import TrainAugment, normalize, resize_pair
from compress.errors import UserError
from compress.io import UnsafeFileError, read_text

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]
CAMVID_IGNORE = 11

SYNTHETIC_CLASSES = ["background", "disc", "box", "triangle", "ring"]


class DataError(UserError, ValueError):
    """Unusable data; the message names the file or folder."""


MAX_PIXELS = 1 << 26  # 67 M pixels (8192 x 8192): far above any frame we segment


@contextmanager
def _open_image(path: Path, what: str):
    """``Image.open`` with the header's size checked against :data:`MAX_PIXELS` before
    any pixel is decoded (a 68-byte PNG can claim 30000 x 30000)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise DataError(f"{path}: {what} header claims more than {MAX_PIXELS} pixels: "
                        "refused before decoding") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable {what} ({e})") from None
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise DataError(f"{path}: {what} header claims {w}x{h} pixels, more than the "
                            f"{MAX_PIXELS} accepted: refused before decoding")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: unreadable {what} ({e})") from None
        yield im


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]``; grey-scale and RGBA are converted, unreadable files named."""
    with _open_image(path, "image") as im:
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # convert("RGB") would clip
            raise DataError(f"{path}: {im.mode} single-channel image (16/32-bit, e.g. a "
                            "mask or depth map) where an 8-bit RGB image is expected")
        return np.array(im.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    with _open_image(path, "mask") as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: mask must be single-channel (mode {im.mode})")
        return np.asarray(im).astype(np.int64)


def check_mask(mask: np.ndarray, classes: int, ignore_index: int, where: str) -> None:
    values = np.unique(mask)
    bad = [int(v) for v in values if not (0 <= v < classes or v == ignore_index)]
    if bad:
        raise DataError(
            f"{where}: label value(s) {bad[:8]} are neither a class (0..{classes - 1}) "
            f"nor the ignore index {ignore_index}"
        )


def ignore_collision(source, limit: int = 16) -> str | None:
    """Why a split's masks look like a 0/255 convention that collides with the ignore
    index (a class without one labelled pixel while the ignore value covers a large share
    of the first ``limit`` masks: every foreground pixel would be ignored), or None."""
    masks = [m for _, m in getattr(source, "pairs", ()) if m is not None][:limit]
    if not masks:
        return None
    classes, ignore = max(2, len(source.class_names)), source.ignore_index
    counts = np.zeros(classes, np.int64)
    ignored = total = 0
    for path in masks:
        mask = read_mask(path)
        total += mask.size
        ignored += int((mask == ignore).sum())
        counts += np.bincount(mask[(mask >= 0) & (mask < classes)].ravel(),
                              minlength=classes)[:classes]
    share = ignored / max(total, 1)
    empty = [i for i in range(classes) if counts[i] == 0]
    if not empty or share < 0.25:
        return None
    names = ["background", *source.class_names] if len(source.class_names) == 1 \
        else list(source.class_names)
    k = empty[0]
    return (f"{source.where}: class {names[k]!r} (label {k}) has no labelled pixel in the "
            f"first {len(masks)} masks while the ignore value {ignore} covers {share:.0%} of "
            f"their pixels: masks saved as 0/{ignore} (foreground = {ignore})? then every "
            f"such pixel is ignored, not learnt or scored; save that class as {k}, or set "
            "ignore_index to a value the masks do not use")


IGNORE = -1  # the layout's own ignore value(s): written as the run's ignore_index
INVALID = -2  # a value the layout never writes: refused


def _spans(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0..2, 5"``."""
    out, start = [], None
    for v, nxt in zip(values, [*values[1:], None]):
        start = v if start is None else start
        if nxt != v + 1:
            out.append(f"{start}" if start == v else f"{start}..{v}")
            start = None
    return ", ".join(out)


@dataclass(frozen=True, eq=False)
class LabelTable:
    """Raw mask value -> class id for the mask files whose name ends with ``suffix``.

    Args:
        name: what the values are, for messages (e.g. ``"Cityscapes labelIds"``).
        suffix: the mask file names this table reads (e.g. ``"_gtFine_labelIds.png"``).
        classes: ``{raw value: class id}``.
        ignore: the raw values the layout reserves for unlabelled / border pixels.
    """

    name: str
    suffix: str
    classes: dict[int, int]
    ignore: tuple[int, ...] = ()
    lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lut = np.full(max([*self.classes, *self.ignore]) + 1, INVALID, np.int64)
        lut[list(self.classes)] = list(self.classes.values())
        lut[list(self.ignore)] = IGNORE
        object.__setattr__(self, "lut", lut)

    def apply(self, raw: np.ndarray, ignore_index: int, where: str) -> np.ndarray:
        """Class ids ``int64 [H, W]`` of a raw mask, the layout's ignore as ``ignore_index``.

        Raises:
            DataError: a value the layout never writes (``where`` names the file).
        """
        inside = (raw >= 0) & (raw < len(self.lut))
        ids = np.where(inside, self.lut[np.clip(raw, 0, len(self.lut) - 1)], INVALID)
        bad = ids == INVALID
        if bad.any():
            valid = sorted([*self.classes, *self.ignore])
            raise DataError(f"{where}: label value(s) {np.unique(raw[bad])[:8].tolist()} are "
                             f"not {self.name} values ({_spans(valid)})")
        ids[ids == IGNORE] = ignore_index
        return ids


def _refuse_missing(missing: list[tuple[Path, str]]) -> None:
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0][0]}: {missing[0][1]}{more}")


class PairSource:
    """Image/mask file pairs with class names (CamVid list file, images/masks folder, or a
    published layout).

    ``tables``: how the masks store labels (:class:`LabelTable`, the first whose suffix
    ends the mask's name); masks no table matches hold class ids as they are."""

    def __init__(self, pairs: list[tuple[Path, Path | None]], class_names: list[str],
                 ignore_index: int, where: str, tables: tuple[LabelTable, ...] = ()) -> None:
        if not pairs:
            raise DataError(f"{where}: no images found")
        # checked up front (a stat per file), not at the first batch
        _refuse_missing([(i, "image missing") for i, _ in pairs if not i.is_file()])
        _refuse_missing([(i, f"mask missing (expected {m})") for i, m in pairs
                         if m is not None and not m.is_file()])
        self.pairs, self.class_names, self.ignore_index = pairs, class_names, ignore_index
        self.where, self.tables = where, tables

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, i: int) -> str:
        return self.pairs[i][0].stem

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path)
        if mask_path is None:
            return image, None, img_path.stem
        if not mask_path.is_file():
            raise DataError(f"{img_path}: mask missing (expected {mask_path})")
        mask = read_mask(mask_path)
        table = next((t for t in self.tables if mask_path.name.endswith(t.suffix)), None)
        if table is not None:
            mask = table.apply(mask, self.ignore_index, str(mask_path))
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} != image size "
                f"{image.shape[1]}x{image.shape[0]} ({img_path.name})"
            )
        # one class name: a binary (foreground) dataset, masks 0 = background, 1 = the class
        check_mask(mask, max(2, len(self.class_names)), self.ignore_index, str(mask_path))
        return image, mask, img_path.stem


def read_data_text(path: Path) -> str:
    """A dataset's text file (split list, classes.txt); unsafe files refused as DataError."""
    try:
        return read_text(path)
    except UnsafeFileError as e:
        raise DataError(str(e)) from None


def camvid_source(root: str | Path, split: str, ignore_index: int = CAMVID_IGNORE) -> PairSource:
    """CamVid in the SegNet layout: ``<split>.txt`` lists ``image mask`` per line, or
    ``<split>/`` + ``<split>annot/`` folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CamVid root not found: {root}")
    listing = root / f"{split}.txt"
    pairs: list[tuple[Path, Path | None]] = []
    if listing.is_file():
        for n, line in enumerate(read_data_text(listing).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{listing}:{n}: expected 'image-path mask-path'")
            pairs.append(tuple(_resolve(root, p) for p in parts))
    elif (root / split).is_dir():
        for img in sorted((root / split).iterdir()):
            if img.suffix.lower() in IMAGE_EXTS:
                pairs.append((img, root / f"{split}annot" / img.name))
    else:
        raise DataError(f"{root}: split {split!r} has neither {split}.txt nor {split}/")
    return PairSource(pairs, CAMVID_CLASSES, ignore_index, f"{root} [{split}]")


def _resolve(root: Path, p: str) -> Path:
    # SegNet lists sometimes carry absolute paths from the author's machine: keep the tail
    path = Path(p)
    if path.is_absolute() and not path.exists():
        path = Path(*path.parts[-2:])
    return path if path.is_absolute() else root / path


def folder_source(root: str | Path, split: str, ignore_index: int = 255, *,
                  masks: bool = True, class_names: list[str] | None = None) -> PairSource:
    """Generic layout: ``root/classes.txt`` (one name a line), ``root/images/[split/]`` and
    ``root/masks/[split/]`` with masks named like their images (``.png``).

    ``masks=False``: images only (a depth-only source); ``class_names`` then stand in for a
    missing classes.txt (the mixture's own classes)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes_file = root / "classes.txt"
    if not classes_file.is_file() and (masks or not class_names):
        raise DataError(f"{root}: classes.txt missing (one class name per line)")
    names = ([ln.strip() for ln in read_data_text(classes_file).splitlines() if ln.strip()]
             if classes_file.is_file() else list(class_names))
    if not names:
        raise DataError(f"{classes_file}: no class names (one class name per line)")
    img_dir, mask_dir = root / "images", root / "masks"
    if (img_dir / split).is_dir():
        img_dir, mask_dir = img_dir / split, mask_dir / split
    if not img_dir.is_dir():
        raise DataError(f"{root}: no images/ folder (or images/{split}/)")
    pairs = [
        (p, mask_dir / (p.stem + ".png") if masks else None)
        for p in sorted(img_dir.iterdir())
        if p.suffix.lower() in IMAGE_EXTS
    ]
    return PairSource(pairs, names, ignore_index, f"{img_dir}")


class SyntheticSource:
    """Procedural scenes (textured background, discs, boxes, triangles, rings), fully
    determined by ``(seed, index)``: a dataset that needs no download."""

    class_names = SYNTHETIC_CLASSES

    def __init__(self, length: int, size: tuple[int, int] = (128, 128), seed: int = 0,
                 ignore_index: int = 255) -> None:
        self.length, self.size, self.seed, self.ignore_index = length, size, seed, ignore_index

    def __len__(self) -> int:
        return self.length

    def name(self, i: int) -> str:
        return f"synthetic_{self.seed}_{i:05d}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        img, mask, _ = self.scene(i)
        return img, mask, self.name(i)

    def scene(self, i: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Image, mask and the object regions (boolean masks, in drawing order)."""
        rng = np.random.default_rng([self.seed, i])
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 120, 3)
        grad = rng.uniform(-40, 40, 3)
        img = base + grad * (xx / w)[..., None] + rng.normal(0, 8, (h, w, 3))
        mask = np.zeros((h, w), np.int64)
        regions = []
        palette = {1: (220, 60, 60), 2: (60, 200, 80), 3: (70, 90, 230), 4: (230, 210, 60)}
        for _ in range(int(rng.integers(2, 6))):
            cls = int(rng.integers(1, 5))
            cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
            r = rng.uniform(0.08, 0.22) * min(h, w)
            if cls == 1:
                region = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            elif cls == 2:
                region = (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 1.1)
            elif cls == 3:
                region = (yy - cy < r) & (yy - cy > -r) & (abs(xx - cx) < (yy - cy + r) * 0.6)
            else:
                d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
                region = (d < r) & (d > r * 0.55)
            colour = np.asarray(palette[cls], np.float32) + rng.normal(0, 25, 3)
            texture = rng.normal(0, 12, (h, w, 1))
            img = np.where(region[..., None], colour + texture, img)
            mask[region] = cls
            regions.append(region)
        img = np.clip(img, 0, 255).astype(np.uint8)
        return img, mask, regions


class SegDataset(torch.utils.data.Dataset):
    """Tensors for one split: augmentation for training, resize for evaluation.

    Items: ``{"image": float32 [3, H, W], "mask": int64 [H, W], "index": int, "name": str}``
    (plus ``"geometry"`` in training, for cached teacher outputs).
    """

    def __init__(self, source, size: tuple[int, int], mean, std, train: bool,
                 augment: TrainAugment | None = None, seed: int = 0,
                 with_depth: bool = False) -> None:
        self.source, self.size, self.mean, self.std = source, tuple(size), mean, std
        self.train, self.augment, self.seed = train, augment, seed
        self.with_depth = with_depth  # items carry "depth" (0 where the source has none)
        self.epoch = 0
        self.class_names = source.class_names
        self.ignore_index = source.ignore_index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        image, mask, name = self.source.load(i)
        if mask is None:
            mask = np.full(image.shape[:2], self.ignore_index, np.int64)
        depth = None
        if self.with_depth:
            load_depth = getattr(self.source, "load_depth", None)
            depth = (load_depth(i, image.shape[:2]) if load_depth is not None
                     else np.zeros(image.shape[:2], np.float32))
        item = {"index": i, "name": name}
        if self.train and self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            item["orig_size"] = list(image.shape[:2])
            image, mask, geo = self.augment(image, mask, rng)
            item["geometry"] = geo
            if depth is not None:  # same crop and flip; 0 (no value) where padded
                depth = self.augment.apply_geometry(torch.from_numpy(depth)[None], geo,
                                                    "nearest", 0.0)[0].numpy()
        else:
            image, mask = resize_pair(image, mask, self.size)
            if depth is not None and depth.shape != tuple(self.size):
                depth = torch.nn.functional.interpolate(
                    torch.from_numpy(depth)[None, None], size=self.size,
                    mode="nearest")[0, 0].numpy()
        item["image"] = torch.from_numpy(normalize(image, self.mean, self.std))
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        if depth is not None:
            item["depth"] = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
        return item
