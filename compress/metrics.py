"""Segmentation metrics from a confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from compress.depth_losses import valid_mask


class ImageSink(Protocol):
    """Where a scoring loop hands each batch's class ids for per-image counts
    (:class:`compress.evidence.ImageCounter`)."""

    def add(self, pred: torch.Tensor, target: torch.Tensor, ignore_index: int,
            images: Sequence[str], class_names: Sequence[str]) -> None: ...


def update_confusion(conf: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     ignore_index: int) -> torch.Tensor:
    """Add ``pred`` / ``target`` (``[N, H, W]`` int) into ``conf`` ``[C, C]`` in place."""
    c = conf.shape[0]
    keep = target != ignore_index
    idx = target[keep].long() * c + pred[keep].long()
    conf += torch.bincount(idx.cpu(), minlength=c * c).reshape(c, c).to(conf.dtype)
    return conf


def image_counts(pred: torch.Tensor, target: torch.Tensor, ignore_index: int, classes: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersection and union pixel counts per class, int64 ``[N, C]`` each.

    The same pixels :func:`update_confusion` counts (``ignore_index`` left out): summed
    over the images they are the confusion's diagonal and ``truth + predicted - diagonal``,
    so :func:`mean_iou` of the sums is :func:`scores`' mIoU of those images.

    Args:
        pred, target: class ids ``[N, H, W]``.
    """
    n = target.shape[0]
    t, p = target.long().cpu(), pred.long().cpu()
    keep = t != ignore_index
    base = torch.arange(n).view(n, 1, 1).expand_as(t) * classes
    size = n * classes
    truth = torch.bincount((base + t)[keep], minlength=size)
    predicted = torch.bincount((base + p)[keep], minlength=size)
    hit = keep & (p == t)
    inter = torch.bincount((base + t)[hit], minlength=size)
    return inter.view(n, classes), (truth + predicted - inter).view(n, classes)


def mean_iou(intersection, union) -> np.ndarray:
    """mIoU over the last axis (classes) from intersection and union counts ``[..., C]``:
    classes with union 0 are left out of the mean; 0.0 where no class has any pixel.
    The one definition: :func:`scores` uses it on a split's confusion."""
    inter = np.asarray(intersection, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    seen = union > 0
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=seen)
    n = seen.sum(-1)
    return np.where(n > 0, iou.sum(-1) / np.maximum(n, 1), 0.0)


def predicted_ids(out, size: tuple[int, int]) -> torch.Tensor:
    """Class ids ``[N, H, W]`` at ``size`` from a predictor's output: logits ``[N, C, h, w]``
    (argmax; one channel: a binary logit, > 0) resized bilinearly, or class ids ``[N, h, w]``
    resized nearest. NumPy arrays or tensors."""
    import torch.nn.functional as F

    out = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
    out = out.cpu()
    size = tuple(size)
    if out.ndim == 4:
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
        return (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)
    pred = out.long()
    if tuple(pred.shape[-2:]) != size:
        pred = F.interpolate(pred[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return pred


def score_predictor(predict, batches, class_names: list[str], ignore_index: int,
                    per_image: ImageSink | None = None) -> tuple[dict, torch.Tensor]:
    """mIoU of a predictor over a split: the one loop from predictions to scores.

    Args:
        predict: ``images [N, 3, H, W] -> logits [N, C, h, w] or class ids [N, h, w]``
            (NumPy or torch, any output size: see :func:`predicted_ids`).
        batches: iterable of ``(images, masks [N, H, W])`` (NumPy or torch), or of
            ``(images, masks, names)`` (the N image names) for ``per_image``.
        class_names: the classes, in id order.
        ignore_index: mask value left out of the scores.
        per_image: also hand each batch's class ids to this sink (per-image counts).

    Returns:
        ``(scores(conf, class_names), confusion [C, C])``.
    """
    c = len(class_names)
    conf = torch.zeros(c, c, dtype=torch.int64)
    for images, masks, *names in batches:
        masks = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
        pred = predicted_ids(predict(images), masks.shape[-2:])
        update_confusion(conf, pred, masks.cpu(), ignore_index)
        if per_image is not None:
            if not names:
                raise ValueError("per_image needs batches of (images, masks, names)")
            per_image.add(pred, masks, ignore_index, names[0], class_names)
    return scores(conf, class_names), conf


def scores(conf: torch.Tensor | np.ndarray, class_names: list[str]) -> dict:
    """mIoU, per-class IoU and Dice by class name, pixel accuracy.

    Classes absent from both truth and prediction get IoU NaN and are left out of the
    mean (reported as ``null`` in JSON).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    gt, pr = conf.sum(1), conf.sum(0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(gt + pr > 0, 2 * tp / (gt + pr), np.nan)
    total = conf.sum()
    return {
        "miou": float(mean_iou(tp, union)),
        "pixel_acc": float(tp.sum() / total) if total else 0.0,
        "dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
        "per_class_dice": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, dice)},
    }


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th percentile Hausdorff distance (pixels) between two binary masks' boundaries."""
    from scipy import ndimage

    if pred.sum() == 0 or target.sum() == 0:
        return float("nan")

    def border(m):
        return m ^ ndimage.binary_erosion(m)

    bp, bt = border(pred.astype(bool)), border(target.astype(bool))
    dt_t = ndimage.distance_transform_edt(~bt)
    dt_p = ndimage.distance_transform_edt(~bp)
    d = np.concatenate([dt_t[bp], dt_p[bt]])
    return float(np.percentile(d, 95))


def weak_teacher(score: dict, conf: torch.Tensor) -> str | None:
    """Why a teacher's score (:func:`scores`, or :func:`compress.evaluate.evaluate` of its
    predictions, with their confusion matrix) is near chance, or None. Used by the distill
    preflight and by ``pseudo-label``'s weak-member check.

    Multi-class: mIoU below half of 1 / classes. Binary: foreground IoU below half of what
    calling every pixel foreground would score (an all-background teacher scores 0 there,
    while its mIoU looks fine thanks to the background).
    """
    if conf.shape[0] == 2:
        total = int(conf.sum())
        guess = float(conf[1].sum()) / total if total else 0.0
        fg_iou = score.get("fg_iou", list(score["per_class_iou"].values())[1]) or 0.0
        if fg_iou < 0.5 * guess:
            return (f"foreground IoU {fg_iou:.3f}, below half of the {guess:.3f} that "
                    "calling every pixel foreground scores")
        return None
    chance = 1.0 / max(conf.shape[0], 2)
    if score["miou"] < chance * 0.5:
        return (f"mIoU {100 * score['miou']:.2f}, near chance ({100 * chance:.1f} for "
                f"{conf.shape[0]} classes)")
    return None


class DepthMeter:
    """Accumulates depth errors over batches; :meth:`compute` gives the dataset's metrics:
    RMSE, AbsRel (``mean(|p - t| / t)``) and the threshold accuracies ``delta < 1.25^k``
    (share of pixels with ``max(p/t, t/p) < 1.25^k``), k = 1..3.

    Predictions are clamped to ``[min_depth, max_depth]`` and only targets inside that
    range count (the usual KITTI protocol: e.g. 1e-3 to 80 m).
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = float("inf")) -> None:
        self.min_depth, self.max_depth = min_depth, max_depth
        self.n = 0
        self.sq = self.abs_rel = 0.0
        self.within = [0, 0, 0]

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
        m = valid_mask(target, valid) & (target >= self.min_depth) & (target <= self.max_depth)
        if not m.any():
            return
        p = pred[m].double().clamp(self.min_depth, self.max_depth)
        t = target[m].double()
        self.n += int(m.sum())
        self.sq += float(((p - t) ** 2).sum())
        self.abs_rel += float(((p - t).abs() / t).sum())
        ratio = torch.maximum(p / t, t / p)
        for k in range(3):
            self.within[k] += int((ratio < 1.25 ** (k + 1)).sum())

    def compute(self) -> dict[str, float]:
        """``{"rmse", "abs_rel", "delta1", "delta2", "delta3", "pixels"}``; NaN metrics
        when no valid pixel was seen."""
        if self.n == 0:
            nan = float("nan")
            return {"rmse": nan, "abs_rel": nan, "delta1": nan, "delta2": nan,
                    "delta3": nan, "pixels": 0}
        return {"rmse": math.sqrt(self.sq / self.n), "abs_rel": self.abs_rel / self.n,
                "delta1": self.within[0] / self.n, "delta2": self.within[1] / self.n,
                "delta3": self.within[2] / self.n, "pixels": self.n}
