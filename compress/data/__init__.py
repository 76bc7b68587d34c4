"""Data sources, splits and mixtures, chosen by name from one dict; what the loaders need
(:mod:`compress.data.loader`: collate, the per-epoch sampler)."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.data.datasets import (
    CAMVID_CLASSES,
    CAMVID_IGNORE,
    SYNTHETIC_CLASSES,
    DataError,
    PairSource,
    SegDataset,
    SyntheticSource,
    camvid_source,
    folder_source,
    ignore_collision,
    read_image,
)
from compress.data.depth import DEPTH_MODES, DepthSource, depth_dir_of
from compress.data.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from compress.data.layouts import (
    ade20k_source,
    cityscapes_source,
    kitti_depth_source,
    voc_source,
)
from compress.data.loader import EpochSampler, collate, drawn_mixture
from compress.data.transforms import TrainAugment, denormalize, normalize, resize_pair

__all__ = [
    "ADE20K_CLASSES",
    "CAMVID_CLASSES",
    "CAMVID_IGNORE",
    "CITYSCAPES_CLASSES",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "DataError",
    "EpochSampler",
    "PairSource",
    "SegDataset",
    "SyntheticSource",
    "TrainAugment",
    "build_depth_val",
    "build_split",
    "build_train_set",
    "collate",
    "create_source",
    "denormalize",
    "drawn_mixture",
    "ignore_collision",
    "normalize",
    "read_image",
    "resize_pair",
    "split_classes",
    "split_has_depth",
    "split_images",
]

SOURCES = {"camvid": camvid_source, "folder": folder_source,
           "cityscapes": cityscapes_source, "voc": voc_source, "ade20k": ade20k_source,
           "kitti_depth": kitti_depth_source}


def create_source(kind: str, root: str | None, split: str, *, ignore_index: int,
                  length: int = 64, size: tuple[int, int] = (128, 128), seed: int = 0,
                  depth: str = "none", masks: bool = True,
                  class_names: list[str] | None = None):
    """Create one raw source by kind name (``synthetic`` or a :data:`SOURCES` entry:
    ``camvid``, ``folder``, ``cityscapes``, ``voc``, ``ade20k``, ``kitti_depth``: depth
    only, with ``depth="files"`` and ``masks=False``).

    Synthetic splits differ by seed (train uses ``seed``, others ``seed + 1000``).
    ``depth`` (``none``, ``dense``/``lidar`` for synthetic, ``files`` for a folder's
    ``depth/``) adds depth targets; ``masks=False`` drops the masks (a depth-only source,
    whose folder may lack classes.txt: ``class_names`` stand in).
    """
    if depth not in DEPTH_MODES:
        raise DataError(f"unknown depth mode {depth!r}; valid: none, dense, lidar, files")
    if kind != "synthetic" and depth in ("dense", "lidar"):
        raise DataError(f"{root}: depth {depth!r} is drawn for synthetic data only; "
                        "real depth maps are depth 'files' in a folder layout")
    if kind == "synthetic":
        if depth == "files":
            raise DataError("synthetic data draws its depth: depth 'dense' or 'lidar', "
                            "not 'files'")
        split_seed = seed if split == "train" else seed + 1000
        src = SyntheticSource(length, size, split_seed, ignore_index)
    elif kind not in SOURCES:
        raise DataError(f"unknown data kind {kind!r}; valid: synthetic, {', '.join(SOURCES)}")
    elif root is None:
        raise DataError(f"data kind {kind!r} needs data.root")
    elif kind == "folder":
        src = folder_source(root, split, ignore_index=ignore_index, masks=masks,
                            class_names=class_names)
    elif kind == "kitti_depth":  # carries its own depth, and no masks
        if masks or depth != "files":
            raise DataError(f"{root}: kitti_depth is a depth-only source: give it "
                            "depth: files and masks: false")
        return kitti_depth_source(root, split, ignore_index=ignore_index,
                                  class_names=class_names)
    else:
        src = SOURCES[kind](root, split, ignore_index=ignore_index)
    if depth == "none" and masks:
        return src
    return DepthSource(src, depth, masks=masks,
                       depth_dir=depth_dir_of(root, split) if depth == "files" else None)


def build_split(data_cfg, split: str, mean, std, ignore_index: int, train: bool = False,
                seed: int = 0, root: str | None = None, kind: str | None = None, *,
                depth: str = "none", masks: bool = True, with_depth: bool = False
                ) -> SegDataset:
    """One split of the configured dataset as a :class:`SegDataset`.

    ``depth`` / ``masks`` as in :func:`create_source`; ``with_depth``: items carry a
    ``"depth"`` map (zeros where the source has none: a multi-task run's batches)."""
    length = data_cfg.synthetic_length if split == "train" else data_cfg.synthetic_val_length
    # the synthetic scenes depend on data.synthetic_seed only, so every run seed is
    # scored on the same val images; ``seed`` drives augmentation
    src = create_source(kind or data_cfg.kind, root or data_cfg.root, split,
                        ignore_index=ignore_index, length=length,
                        size=tuple(data_cfg.size), seed=data_cfg.synthetic_seed,
                        depth=depth, masks=masks)
    aug = _augment(data_cfg, ignore_index) if train else None
    return SegDataset(src, data_cfg.size, mean, std, train=train, augment=aug, seed=seed,
                      with_depth=with_depth)


def build_depth_val(data_cfg, mean, std, ignore_index: int,
                    class_names: list[str] | None = None) -> SegDataset:
    """Where a multi-task run scores depth: ``data.depth_val`` when set, else the main
    val split read with ``data.depth`` (items carry ``"depth"``)."""
    s = data_cfg.depth_val
    if s is None:
        return build_split(data_cfg, data_cfg.val_split, mean, std, ignore_index,
                           depth=data_cfg.depth, with_depth=True)
    if s.depth == "none":
        raise DataError("data.depth_val.depth is none: the depth validation source needs "
                        "depth (dense / lidar for synthetic, files for a folder)")
    src = create_source(s.kind, s.root, s.split, ignore_index=ignore_index, length=s.length,
                        size=tuple(data_cfg.size), seed=s.seed, depth=s.depth, masks=s.masks,
                        class_names=class_names)
    return SegDataset(src, data_cfg.size, mean, std, train=False, with_depth=True)


def split_images(kind: str, root: str | None, split: str, *, size: tuple[int, int], mean,
                 std, ignore_index: int, count: int | None = None,
                 synthetic_seed: int = 0, depth: str = "none", masks: bool = True,
                 class_names: list[str] | None = None) -> SegDataset:
    """The images of one split as a network sees them: resized to ``size`` and normalised
    with ``mean`` / ``std``, no augmentation, masks beside them.

    The one way to read a split outside training: ``compress eval``, export's calibration
    and verification sets and bench's report use it instead of a training ``DataConfig``.

    Args:
        kind: ``synthetic`` or a :data:`SOURCES` name (``camvid``, ``folder``,
            ``cityscapes``, ``voc``, ``ade20k``).
        root: the dataset root (unused for ``synthetic``).
        count: synthetic only: how many scenes (default 96 for ``train``, else 32, the
            training config's defaults); other kinds hold what their files hold.
        synthetic_seed: the scenes' seed (a split's scenes depend on it and the split only).
        depth: ``none`` (default: items as always), ``dense`` / ``lidar`` (synthetic) or
            ``files`` (a folder's ``depth/``): items also carry ``"depth"`` float32
            ``[H, W]`` (0 = no value); :func:`split_has_depth` says which a split has.
        masks, class_names: ``masks=False``: a depth-only split (its masks all ignored;
            ``class_names``, the model's, stand in for the layout's own).

    Returns:
        A :class:`SegDataset` (items ``{"image": float32 [3, H, W], "mask": int64 [H, W],
        "index", "name"}``, plus ``"depth"`` with ``depth``) with ``class_names`` and
        ``ignore_index``.

    Raises:
        DataError: an unknown kind, a missing root, unreadable files (named).
    """
    length = count or (96 if split == "train" else 32)
    src = create_source(kind, root, split, ignore_index=ignore_index, length=length,
                        size=tuple(size), seed=synthetic_seed, depth=depth, masks=masks,
                        class_names=class_names)
    return SegDataset(src, tuple(size), mean, std, train=False, with_depth=depth != "none")


def depth_only_split(kind: str, root: str | None, split: str) -> bool:
    """Whether a split holds depth and no masks: KITTI's annotated depth, or a folder with
    ``depth/`` and images but no ``masks/`` (what a run's ``data.depth_val`` may be)."""
    if kind == "kitti_depth":
        return True
    if kind != "folder" or root is None:
        return False
    r = Path(root)
    return depth_dir_of(r, split).is_dir() and not (r / "masks").is_dir()


def split_has_depth(kind: str, root: str | None, split: str) -> str:
    """The ``depth`` mode :func:`split_images` can read a split with: ``dense`` for
    synthetic scenes (they draw their own), ``files`` for a folder with ``depth/<split>``
    (or ``depth/``), else ``none``."""
    if kind == "synthetic":
        return "dense"
    if kind == "folder" and root is not None and depth_dir_of(root, split).is_dir():
        return "files"
    return "none"


def split_classes(kind: str, root: str | None, split: str, ignore_index: int = 255
                  ) -> list[str]:
    """Class names of one split (without loading images)."""
    if kind == "synthetic":
        return list(SYNTHETIC_CLASSES)
    return list(create_source(kind, root, split, ignore_index=ignore_index).class_names)


def _augment(data_cfg, ignore_index: int) -> TrainAugment:
    return TrainAugment(tuple(data_cfg.size), tuple(data_cfg.scale_range), data_cfg.hflip,
                        data_cfg.color_jitter, ignore_index)


class MixtureDataset(torch.utils.data.ConcatDataset):
    """Several training sources; :meth:`sample_weights` gives each source its ratio."""

    def __init__(self, parts: list[SegDataset], ratios: list[float]) -> None:
        super().__init__(parts)
        self.parts, self.ratios = parts, ratios
        self.class_names = parts[0].class_names
        self.ignore_index = parts[0].ignore_index
        for p in parts[1:]:
            where = p.source.where if hasattr(p.source, "where") else p.source
            if len(p.class_names) != len(self.class_names):
                raise DataError(
                    f"{where}: {len(p.class_names)} classes, but the first source has "
                    f"{len(self.class_names)}"
                )
            if [n.lower() for n in p.class_names] != [n.lower() for n in self.class_names]:
                raise DataError(f"{where}: classes {list(p.class_names)} differ from the first "
                                f"source's {list(self.class_names)} (same names, same order)")

    def __getitem__(self, idx: int) -> dict:
        item = super().__getitem__(idx)
        item["index"] = idx if idx >= 0 else len(self) + idx  # global: cached teacher outputs
        return item

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def sample_weights(self) -> torch.Tensor:
        total = sum(self.ratios)
        return torch.cat([
            torch.full((len(p),), r / total / len(p), dtype=torch.double)
            for p, r in zip(self.parts, self.ratios)
        ])


def build_train_set(data_cfg, mean, std, ignore_index: int, seed: int = 0,
                    with_depth: bool = False):
    """The training set: the main split, mixed with ``data.extra_train`` sources if any.

    Each source's ``depth`` / ``masks`` say which targets it carries; ``with_depth`` (a
    multi-task run) gives every item a ``"depth"`` map (zeros: no value)."""
    main = build_split(data_cfg, data_cfg.train_split, mean, std, ignore_index, True, seed,
                       depth=data_cfg.depth, masks=data_cfg.masks, with_depth=with_depth)
    if not data_cfg.extra_train:
        return main
    parts, ratios = [main], [1.0]
    aug = _augment(data_cfg, ignore_index)
    for s in data_cfg.extra_train:
        src = create_source(s.kind, s.root, s.split, ignore_index=ignore_index, length=s.length,
                            size=tuple(data_cfg.size), seed=s.seed, depth=s.depth,
                            masks=s.masks, class_names=list(main.class_names))
        parts.append(SegDataset(src, data_cfg.size, mean, std, True, aug, seed,
                                with_depth=with_depth))
        ratios.append(s.weight)
    return MixtureDataset(parts, ratios)


def dataset_classes(data_cfg, ignore_index: int) -> list[str]:
    """Class names of the configured dataset (without loading images)."""
    return split_classes(data_cfg.kind, data_cfg.root, data_cfg.val_split, ignore_index)
