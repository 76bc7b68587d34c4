"""``compress eval``: score a checkpoint or exported artifact on any split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from compress.data import ignore_collision, split_classes, split_images
from compress.errors import InputError
from compress.io import atomic_write_json
from compress.spec import ModelSpec
from compress.train import check_class_names, collate, depth_task, evaluate, evaluate_depth


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"352x480"`` -> ``(352, 480)``; each side a positive multiple of 32."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {size!r} must look like HxW, e.g. 352x480") from None
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise InputError(f"--size {size!r}: height and width must be positive multiples of 32")
    return h, w


Predict = Callable[[torch.Tensor], torch.Tensor]
# (path, device, spec or None) -> (predict, spec): how ``evaluate_checkpoint`` opens a file
PredictorLoader = Callable[[Path, str, "ModelSpec | None"], tuple[Predict, ModelSpec]]


def load_predictor(path: Path, device: str = "cpu", spec: ModelSpec | None = None):
    """A ``predict(images) -> logits`` callable (the eval-mode model) and its spec, for a
    checkpoint. Exported artifacts need deploy's runtimes: ``deploy.runtime.load_predictor``
    opens both (the ``compress eval`` command passes it in)."""
    from compress.models import ModelError, load_model

    if path.suffix not in (".pt", ".pth"):
        raise ModelError(f"{path}: not a checkpoint (.pt/.pth); score an exported artifact "
                         "with the `compress` command (python -m segcompress.cli eval)")
    model, spec = load_model(path, spec=spec, device=device, return_spec=True)
    return model, spec


SCORE_AT = ("network", "source")


class SourceMasks(torch.utils.data.Dataset):
    """The items of an evaluation ``SegDataset`` (image at network size) with the mask at
    the image's source size, so logits are resized back and scored there."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.sizes: set[tuple[int, int]] = set()  # the source sizes served (in-process loader)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        image, mask, _ = self.dataset.source.load(i)
        if mask is None:
            mask = np.full(image.shape[:2], self.dataset.ignore_index, np.int64)
        item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
        self.sizes.add(tuple(mask.shape))
        return item


def evaluate_checkpoint(path: Path, data: Path, split: str = "val", *, kind: str = "camvid",
                        size: tuple[int, int] | None = None, flip: bool = False,
                        out: Path | None = None, arch: str | None = None,
                        encoder: str | None = None, classes: int | None = None,
                        device: str = "cpu", batch_size: int = 4,
                        score_at: str = "network", depth: str = "auto",
                        load: PredictorLoader = load_predictor) -> dict:
    """Score ``path`` on ``data``/``split``; writes ``eval.json`` and ``confusion.csv``
    into ``out`` (default ``<checkpoint dir>/eval_<checkpoint name>_<split>/``, so two
    checkpoints in one folder keep their own results).

    ``score_at="network"`` scores at the network's input size (masks resized, nearest);
    ``"source"`` resizes the logits (bilinear) back to each image's own size and scores
    against the original masks (CamVid: 360x480), the resolution papers report. One
    image per batch then, as source sizes may differ.

    A plain state_dict needs ``arch``, ``encoder`` and ``classes``; its input size is
    ``size`` (required) and its class names come from the data.

    ``load`` opens ``path``: :func:`load_predictor` (checkpoints) by default;
    ``deploy.runtime.load_predictor`` for exported artifacts too.

    A multi-task model (its spec has ``tasks``) is also scored on depth when the split
    has depth (``depth``: ``auto`` = a folder's ``depth/`` or synthetic dense depth;
    ``none``; ``dense`` / ``lidar`` / ``files``): ``eval.json`` then holds ``depth``
    (``rmse``, ``abs_rel``, ``delta1..3``, ``pixels``) beside the segmentation scores."""
    if score_at not in SCORE_AT:
        raise InputError(f"--score-at {score_at!r}: expected one of {', '.join(SCORE_AT)}")
    if depth not in ("auto", "none", "dense", "lidar", "files"):
        raise InputError(f"--depth {depth!r}: expected auto, none, dense, lidar or files")
    from compress.models import make_spec
    from compress.train import resolve_device

    path, data = Path(path), Path(data)
    dev = resolve_device(device)
    spec = None
    if arch or encoder or classes:
        if not (arch and encoder and classes):
            raise InputError("a plain state_dict needs all of --arch, --encoder and --classes")
        if size is None:
            raise InputError(f"{path}: a plain state_dict does not record the size it was "
                             "trained at: give --size HxW (scores change with it)")
        spec = make_spec(arch=arch, encoder=encoder, classes=classes, input_size=size,
                         class_names=_data_class_names(kind, data, split))
    predict, spec = load(path, str(dev), spec)
    size = size or tuple(spec.input_size)
    dt = depth_task(spec)
    if dt is None and depth not in ("auto", "none"):
        raise InputError(f"--depth {depth}: {path} is a single-task model (no depth output): "
                         "there is no depth to score; drop --depth")
    mode = _depth_mode(depth, kind, data, split) if dt is not None else "none"
    # a multi-task model on a split with depth: at the network size one pass scores both
    one_pass = mode != "none" and score_at == "network"
    ds = split_images(kind, str(data), split, size=size, mean=spec.mean, std=spec.std,
                      ignore_index=spec.ignore_index, depth=mode if one_pass else "none")
    if len(ds.class_names) != spec.classes:
        raise InputError(f"{path}: model has {spec.classes} classes but {data} has "
                         f"{len(ds.class_names)}")
    check_class_names(spec.class_names, spec.ignore_index, list(ds.class_names),
                      what=f"{path}: the model's class names")
    if (why := ignore_collision(ds.source)) is not None:  # the same check as training's
        logging.getLogger("compress").warning(f"warning: {why}")
    if score_at == "source":
        ds, batch_size = SourceMasks(ds), 1
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    result, conf = evaluate(predict, loader, spec.class_names, spec.ignore_index, dev,
                            flip=flip, show=True, depth=dt if one_pass else None)
    if mode != "none":
        if not one_pass:
            dset = split_images(kind, str(data), split, size=size, mean=spec.mean,
                                std=spec.std, ignore_index=spec.ignore_index, depth=mode)
            dloader = torch.utils.data.DataLoader(dset, batch_size=batch_size,
                                                  collate_fn=collate)
            result["depth"] = evaluate_depth(predict, dloader, dt.name, dev,
                                             max_depth=dt.max_depth, show=True)
        result["depth"].update(task=dt.name, unit=dt.unit, targets=mode)
    out = Path(out) if out else path.parent / f"eval_{path.stem}_{split}"
    result.update(checkpoint=str(path), data=str(data), split=split, size=list(size), flip=flip,
                  images=len(ds), scored_at=score_at,
                  score_sizes=sorted([list(v) for v in ds.sizes]) if score_at == "source"
                  else [list(size)])
    atomic_write_json(out / "eval.json", result)
    names = list(result["per_class_iou"])
    rows = ["truth\\pred," + ",".join(names)]
    rows += [n + "," + ",".join(str(int(v)) for v in r) for n, r in zip(names, conf.tolist())]
    from compress.io import atomic_write_text

    atomic_write_text(out / "confusion.csv", "\n".join(rows) + "\n")
    result["eval_json"] = str(out / "eval.json")
    return result


def _depth_mode(depth: str, kind: str, data: Path, split: str) -> str:
    """The depth targets to score against: ``auto`` is a folder's ``depth/`` when it has
    one, synthetic dense depth for synthetic data, else none."""
    if depth != "auto":
        return depth
    if kind == "synthetic":
        return "dense"
    if kind == "folder" and (Path(data) / "depth").is_dir():
        return "files"
    return "none"


def _data_class_names(kind: str, data: Path, split: str) -> list[str] | None:
    """The dataset's class names (classes.txt, CamVid's list, synthetic's), or None."""
    try:
        return split_classes(kind, str(data), split, 255)
    except (ValueError, OSError):
        return None


def format_table(result: dict) -> str:
    lines = [f"{'class':<16}{'IoU':>8}", "-" * 24]
    for name, v in result["per_class_iou"].items():
        lines.append(f"{name:<16}{'n/a' if v is None else f'{v * 100:.2f}':>8}")
    lines.append("-" * 24)
    lines.append(f"{'mIoU':<16}{result['miou'] * 100:>8.2f}")
    lines.append(f"{'pixel acc':<16}{result['pixel_acc'] * 100:>8.2f}")
    lines.append(f"{'Dice':<16}{result['dice'] * 100:>8.2f}")
    if "scored_at" in result:
        sizes = ", ".join(f"{h}x{w}" for h, w in result["score_sizes"])
        lines.append(f"scored at {result['scored_at']} resolution ({sizes})")
    d = result.get("depth")
    if d:
        unit = d.get("unit", "m")
        lines += ["-" * 24, f"{'depth RMSE':<16}{d['rmse']:>8.3f} {unit}",
                  f"{'depth AbsRel':<16}{d['abs_rel']:>8.3f}",
                  f"{'depth d<1.25':<16}{d['delta1'] * 100:>8.2f}",
                  f"({d['pixels']} valid pixels, {d.get('targets', '')} depth)"]
    return "\n".join(lines)
