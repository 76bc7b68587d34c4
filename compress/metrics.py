"""Segmentation metrics from a confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

import numpy as np
import torch


def update_confusion(conf: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     ignore_index: int) -> torch.Tensor:
    """Add ``pred`` / ``target`` (``[N, H, W]`` int) into ``conf`` ``[C, C]`` in place."""
    c = conf.shape[0]
    keep = target != ignore_index
    idx = target[keep].long() * c + pred[keep].long()
    conf += torch.bincount(idx.cpu(), minlength=c * c).reshape(c, c).to(conf.dtype)
    return conf


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


def score_predictor(predict, batches, class_names: list[str], ignore_index: int
                    ) -> tuple[dict, torch.Tensor]:
    """mIoU of a predictor over a split: the one loop from predictions to scores.

    Args:
        predict: ``images [N, 3, H, W] -> logits [N, C, h, w] or class ids [N, h, w]``
            (NumPy or torch, any output size: see :func:`predicted_ids`).
        batches: iterable of ``(images, masks [N, H, W])`` (NumPy or torch).
        class_names: the classes, in id order.
        ignore_index: mask value left out of the scores.

    Returns:
        ``(scores(conf, class_names), confusion [C, C])``.
    """
    c = len(class_names)
    conf = torch.zeros(c, c, dtype=torch.int64)
    for images, masks in batches:
        masks = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
        update_confusion(conf, predicted_ids(predict(images), masks.shape[-2:]), masks.cpu(),
                         ignore_index)
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
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
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
