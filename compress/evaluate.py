"""Scoring: the one evaluation loop (:func:`evaluate`: segmentation scores, flip TTA,
HD95, per-image counts; :func:`evaluate_depth`) that validation, ``compress eval`` and the
teacher checks share, and ``compress eval`` itself (:func:`evaluate_checkpoint`: score a
checkpoint or exported artifact on any split)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from compress.config import check_class_names
from compress.data import (
    collate,
    depth_only_split,
    ignore_collision,
    split_classes,
    split_images,
)
from compress.devices import resolve_device
from compress.errors import InputError, ModelError
from compress.evidence import ImageCounter, ImageCounts, paired_bootstrap
from compress.hf import CONFIG_FILE, is_hf_dir, load_segmenter
from compress.io import atomic_write_json, atomic_write_text, fault_point
from compress.losses import two_way
from compress.metrics import DepthMeter, ImageSink, hd95, predicted_ids, scores, update_confusion
from compress.models import make_spec
from compress.multitask import depth_task, seg_logits
from compress.outdir import OutDir, open_out
from compress.spec import MAX_SIDE, ModelSpec


@torch.no_grad()
def evaluate(predict, loader, class_names: list[str], ignore_index: int, device="cpu",
             flip: bool = False, show: bool = False, depth=None,
             per_image: ImageSink | None = None, desc: str = "eval") -> tuple[dict, torch.Tensor]:
    """Score ``predict(images) -> logits`` on a loader.

    Args:
        predict: a model or any callable from ``[N, 3, H, W]`` to ``[N, C, H, W]`` logits.
        flip: average softmax with the horizontally flipped input (test-time augmentation).
        depth: the depth task (:func:`compress.multitask.depth_task`) of a multi-task
            model whose batches carry ``"depth"``: the same forward pass also scores it,
            into the result's ``"depth"`` (one pass over the split for both tasks; depth is
            not flipped).
        per_image: also hand each batch's class ids and image names to this sink
            (:class:`compress.evidence.ImageCounter`: per-image counts, same pixels).

    Returns:
        ``(scores dict, confusion [C, C])``. A binary task (one class name: a single
        foreground logit) is scored over ``background`` + that class; binary tasks (one or
        two classes) also get ``fg_iou``, ``fg_dice`` and ``hd95`` (pixels, mean over the
        images where both masks have foreground; NaN when none has).
    """
    if isinstance(predict, nn.Module):
        predict.eval()
    meter = DepthMeter(max_depth=depth.max_depth) if depth is not None else None
    names = ["background", *class_names] if len(class_names) == 1 else list(class_names)
    c = len(names)
    conf = torch.zeros(c, c, dtype=torch.int64)
    distances: list[float] = []
    for batch in tqdm(loader, desc=desc, disable=not show, leave=False):
        fault_point("eval_batch")  # test hook (tests/faults): a kill during validation
        x = batch["image"].to(device)
        out = predict(x)
        logits = seg_logits(out)  # a multi-task model: its "seg" output
        if meter is not None:
            _update_depth(meter, out, depth.name, batch["depth"])
        if flip:
            logits = (two_way(logits).softmax(1)
                      + two_way(seg_logits(predict(x.flip(-1))).flip(-1)).softmax(1))
        pred = predicted_ids(logits, batch["mask"].shape[-2:])  # the one logits -> ids rule
        if pred.max() >= c:  # a model with more classes than the data, without a class map
            raise ValueError(f"predictions reach class {int(pred.max())} but the data has {c} "
                             "classes")
        update_confusion(conf, pred, batch["mask"], ignore_index)
        if per_image is not None:
            per_image.add(pred, batch["mask"], ignore_index, batch["name"], names)
        if c == 2:
            for p, t in zip(pred.numpy(), batch["mask"].numpy()):
                distances.append(hd95((p == 1) & (t != ignore_index), t == 1))
    result = scores(conf, names)
    if meter is not None:
        result["depth"] = meter.compute()
    if c == 2:
        fg = names[1]
        result["fg_iou"] = result["per_class_iou"][fg] or 0.0
        result["fg_dice"] = result["per_class_dice"][fg] or 0.0
        finite = [d for d in distances if math.isfinite(d)]
        result["hd95"] = sum(finite) / len(finite) if finite else float("nan")
    return result, conf


@torch.no_grad()
def evaluate_depth(predict, loader, task: str = "depth", device="cpu", min_depth: float = 1e-3,
                   max_depth: float = float("inf"), show: bool = False) -> dict:
    """Depth metrics (:class:`compress.metrics.DepthMeter`: ``rmse``, ``abs_rel``,
    ``delta1..3``, ``pixels``) of ``predict(images)[task]`` against the batches'
    ``"depth"`` maps, on valid pixels (target > 0) inside ``[min_depth, max_depth]``."""
    if isinstance(predict, nn.Module):
        predict.eval()
    meter = DepthMeter(min_depth, max_depth)
    for batch in tqdm(loader, desc="eval depth", disable=not show, leave=False):
        _update_depth(meter, predict(batch["image"].to(device)), task, batch["depth"])
    return meter.compute()


def _update_depth(meter, out, task: str, target: torch.Tensor) -> None:
    """Add one batch's ``out[task]`` (resized to the targets' size) to a DepthMeter."""
    if not isinstance(out, dict) or task not in out:
        raise ValueError(f"the model has no {task!r} output (single-task model?)")
    pred = torch.as_tensor(out[task]).float().cpu()
    if pred.shape[-2:] != target.shape[-2:]:
        pred = torch.nn.functional.interpolate(pred[:, None], size=target.shape[-2:],
                                               mode="bilinear", align_corners=False)[:, 0]
    meter.update(pred, target)


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
    if max(h, w) > MAX_SIDE:
        raise InputError(f"--size {size!r}: at most {MAX_SIDE} pixels a side")
    return h, w


Predict = Callable[[torch.Tensor], torch.Tensor]
# (path, device, spec or None) -> (predict, spec): how ``evaluate_checkpoint`` opens a file
PredictorLoader = Callable[[Path, str, "ModelSpec | None"], tuple[Predict, ModelSpec]]


def checkpoint_predictor(path: Path, device: str = "cpu", spec: ModelSpec | None = None):
    """A ``predict(images) -> logits`` callable (the eval-mode model) and its spec, for a
    checkpoint, or a transformers model folder (``config.json`` inside:
    :func:`compress.hf.load_hf_model`). Exported artifacts need deploy's runtimes:
    ``deploy.runtime.load_predictor`` opens both (the ``compress eval`` command passes it
    in)."""
    hf = is_hf_dir(path)
    if path.is_dir() and not hf:
        raise ModelError(f"{path}: a folder without {CONFIG_FILE}: give a checkpoint "
                         "(.pt/.pth) or a transformers model folder (save_pretrained)")
    if not hf and path.suffix not in (".pt", ".pth"):
        raise ModelError(f"{path}: not a checkpoint (.pt/.pth); score an exported artifact "
                         "with the `compress` command (python -m segcompress.cli eval)")
    return load_segmenter(path, what="compress eval", device=device, spec=spec)


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


EVAL_FILES = ("eval.json", "confusion.csv", "per_image.npz")


def evaluate_checkpoint(path: Path, data: Path, split: str = "val", *, kind: str = "camvid",
                        size: tuple[int, int] | None = None, flip: bool = False,
                        out: Path | None = None, arch: str | None = None,
                        encoder: str | None = None, classes: int | None = None,
                        device: str = "cpu", batch_size: int = 4,
                        score_at: str = "network", depth: str = "auto",
                        reference: Path | None = None,
                        load: PredictorLoader = checkpoint_predictor) -> dict:
    """Score ``path`` on ``data``/``split``; writes ``eval.json``, ``confusion.csv`` and
    ``per_image.npz`` (per-image counts, :class:`compress.evidence.ImageCounts`) into
    ``out`` (default ``<checkpoint dir>/eval_<checkpoint name>_<split>/``, so two
    checkpoints in one folder keep their own results).

    With ``reference`` (a second checkpoint or artifact), that one is scored the same way
    on the same images into ``out/reference/``, and ``eval.json`` gets ``comparison``:
    Δ mIoU = ``path`` − ``reference`` in points with its paired bootstrap 95% interval
    over the images and the verdict (:func:`compress.evidence.paired_bootstrap`).

    ``score_at="network"`` scores at the network's input size (masks resized, nearest);
    ``"source"`` resizes the logits (bilinear) back to each image's own size and scores
    against the original masks (CamVid: 360x480), the resolution papers report. One
    image per batch then, as source sizes may differ.

    A plain state_dict needs ``arch``, ``encoder`` and ``classes``; its input size is
    ``size`` (required) and its class names come from the data.

    ``load`` opens ``path`` (and ``reference``): :func:`checkpoint_predictor` (checkpoints) by
    default; ``deploy.runtime.load_predictor`` for exported artifacts too.

    A multi-task model (its spec has ``tasks``) is also scored on depth when the split
    has depth (``depth``: ``auto`` = a folder's ``depth/`` or synthetic dense depth;
    ``none``; ``dense`` / ``lidar`` / ``files``): ``eval.json`` then holds ``depth``
    (``rmse``, ``abs_rel``, ``delta1..3``, ``pixels``) beside the segmentation scores."""
    path = Path(path)
    # checked before any work: never over a file the toolkit did not write
    out = open_out(Path(out) if out else path.parent / f"eval_{path.stem}_{split}")
    subs = ("", "reference/") if reference is not None else ("",)
    out.check([sub + name for sub in subs for name in EVAL_FILES])
    options = {"kind": kind, "size": size, "flip": flip, "device": device,
               "batch_size": batch_size, "score_at": score_at, "depth": depth, "load": load}
    if depth_only_split(kind, str(data), split):  # no masks: depth is all there is to score
        if reference is not None or arch or encoder or classes:
            raise InputError(f"{data} ({split}) is a depth-only split: only a multi-task "
                             "checkpoint's depth is scored on it (no --compare, which pairs "
                             "segmentation scores; no plain state_dict, which has no depth head)")
        result = _score_depth_only(path, Path(data), split, **options)
        result["eval_json"] = str(_write_eval(out, "", result))
        return result
    result, conf, counts = _score(path, data, split, arch=arch, encoder=encoder,
                                  classes=classes, **options)
    if reference is not None:
        ref, ref_conf, ref_counts = _score(Path(reference), data, split, **options)
        ref["eval_json"] = str(_write_eval(out, "reference/", ref, ref_conf, ref_counts))
        delta = paired_bootstrap([ref_counts], [counts])
        result["comparison"] = {"reference": str(reference), "reference_miou": ref["miou"],
                                "reference_eval": ref["eval_json"], **delta.to_dict()}
    result["eval_json"] = str(_write_eval(out, "", result, conf, counts))
    return result


def _write_eval(out: OutDir, sub: str, result: dict, conf: torch.Tensor | None = None,
                counts: ImageCounts | None = None) -> Path:
    """:data:`EVAL_FILES` in ``out/sub``, each atomically and listed as the toolkit's
    (``eval.json`` alone without a confusion: a depth-only split)."""
    names = [sub + name for name in EVAL_FILES][:1 if conf is None else None]
    out.claim(names)
    path = atomic_write_json(out / names[0], result)
    if conf is None or counts is None:
        out.record(names)
        return path
    classes = list(result["per_class_iou"])
    rows = ["truth\\pred," + ",".join(classes)]
    rows += [n + "," + ",".join(str(int(v)) for v in r) for n, r in zip(classes, conf.tolist())]
    atomic_write_text(out / names[1], "\n".join(rows) + "\n")
    counts.save(out / names[2])
    out.record(names)
    return path


def _score(path: Path, data: Path, split: str, *, kind: str, size: tuple[int, int] | None,
           flip: bool, device: str, batch_size: int, score_at: str, depth: str,
           load: PredictorLoader, arch: str | None = None, encoder: str | None = None,
           classes: int | None = None) -> tuple[dict, torch.Tensor, ImageCounts]:
    """The scores, confusion and per-image counts of :func:`evaluate_checkpoint`."""
    if score_at not in SCORE_AT:
        raise InputError(f"--score-at {score_at!r}: expected one of {', '.join(SCORE_AT)}")
    if depth not in ("auto", "none", "dense", "lidar", "files"):
        raise InputError(f"--depth {depth!r}: expected auto, none, dense, lidar or files")
    data = Path(data)
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
    counter = ImageCounter(str(path))
    result, conf = evaluate(predict, loader, spec.class_names, spec.ignore_index, dev,
                            flip=flip, show=True, depth=dt if one_pass else None,
                            per_image=counter)
    if mode != "none":
        if not one_pass:
            dset = split_images(kind, str(data), split, size=size, mean=spec.mean,
                                std=spec.std, ignore_index=spec.ignore_index, depth=mode)
            dloader = torch.utils.data.DataLoader(dset, batch_size=batch_size,
                                                  collate_fn=collate)
            result["depth"] = evaluate_depth(predict, dloader, dt.name, dev,
                                             max_depth=dt.max_depth, show=True)
        result["depth"].update(task=dt.name, unit=dt.unit, targets=mode)
    result.update(checkpoint=str(path), data=str(data), split=split, size=list(size), flip=flip,
                  images=len(ds), scored_at=score_at,
                  score_sizes=sorted([list(v) for v in ds.sizes]) if score_at == "source"
                  else [list(size)])
    return result, conf, counter.counts(split=split, checkpoint=str(path))


def _score_depth_only(path: Path, data: Path, split: str, *, kind: str, size, flip: bool,
                      device: str, batch_size: int, score_at: str, depth: str,
                      load: PredictorLoader) -> dict:
    """:func:`evaluate_checkpoint` on a split with depth and no masks (KITTI's annotated
    depth, a folder with ``depth/`` and no ``masks/``): the depth metrics of a multi-task
    model, at the network size."""
    if score_at != "network" or flip or depth not in ("auto", "files"):
        raise InputError(f"{data} ({split}) is a depth-only split: it is scored at the "
                         "network size, without --flip, on its depth files (drop "
                         "--score-at / --flip / --depth)")
    dev = resolve_device(device)
    predict, spec = load(path, str(dev), None)
    dt = depth_task(spec)
    if dt is None:
        raise InputError(f"{data} ({split}) has depth and no masks, and {path} is a "
                         "single-task model: there is nothing it can be scored on")
    size = size or tuple(spec.input_size)
    ds = split_images(kind, str(data), split, size=size, mean=spec.mean, std=spec.std,
                      ignore_index=spec.ignore_index, depth="files", masks=False,
                      class_names=list(spec.class_names))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    scores = evaluate_depth(predict, loader, dt.name, dev, max_depth=dt.max_depth, show=True)
    scores.update(task=dt.name, unit=dt.unit, targets="files")
    return {"depth": scores, "checkpoint": str(path), "data": str(data), "split": split,
            "size": list(size), "images": len(ds), "depth_only": True}


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
    if result.get("depth_only"):
        return "\n".join(_depth_lines(result["depth"])[1:])
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
    c = result.get("comparison")
    if c:
        low, high = c["delta_ci"]
        lines += ["-" * 24, f"vs {c['reference']}: mIoU {c['reference_miou'] * 100:.2f}",
                  (f"Δ mIoU {c['delta_pts']:+.2f} pts, {c['ci_level'] * 100:g}% CI "
                  f"[{low:+.2f}, {high:+.2f}] (paired bootstrap, {c['resamples']} resamples "
                  f"of the {c['images']} images): {c['verdict']}")]
    if result.get("depth"):
        lines += _depth_lines(result["depth"])
    return "\n".join(lines)


def _depth_lines(d: dict) -> list[str]:
    unit = d.get("unit", "m")
    return ["-" * 24, f"{'depth RMSE':<16}{d['rmse']:>8.3f} {unit}",
            f"{'depth AbsRel':<16}{d['abs_rel']:>8.3f}",
            f"{'depth d<1.25':<16}{d['delta1'] * 100:>8.2f}",
            f"({d['pixels']} valid pixels, {d.get('targets', '')} depth)"]
