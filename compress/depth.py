"""Dense regression of depth: the losses a depth head trains with and the metrics it is
scored by, on valid pixels only.

A depth target is a float tensor ``[N, H, W]`` in the task's unit (metres by default);
a pixel is valid where the target is finite and positive (0 marks "no measurement", as in
sparse LiDAR maps) and, when given, where the extra ``valid`` mask is true. Every function
here ignores the other pixels; a batch without one valid pixel gives a zero loss that
still has a gradient path (so a mixed batch of segmentation-only samples trains).

Losses (``DEPTH_LOSSES``):
- ``l1``: mean absolute error.
- ``silog``: the scale-invariant log loss of Eigen et al. (2014),
  ``mean(d^2) - lam * mean(d)^2`` with ``d = log(pred) - log(target)``; ``lam = 1`` makes it
  fully invariant to a global scale of the prediction, ``lam = 0`` is a plain log-MSE.
- ``berhu``: the reverse Huber loss (Laina et al. 2016): ``|x|`` up to ``c``, then
  ``(x^2 + c^2) / (2c)``, with ``c = 0.2 * max|x|`` over the batch's valid pixels.

Metrics (:class:`DepthMeter`): RMSE, AbsRel (``mean(|p - t| / t)``) and the threshold
accuracies ``delta < 1.25^k`` (share of pixels with ``max(p/t, t/p) < 1.25^k``), k = 1..3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

DEPTH_LOSSES = ("l1", "silog", "berhu")
EPS = 1e-6


def valid_mask(target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels with a measurement: finite, positive target (and ``valid`` when given)."""
    ok = torch.isfinite(target) & (target > 0)
    return ok if valid is None else ok & valid.bool()


def _zero(pred: torch.Tensor) -> torch.Tensor:
    return pred.sum() * 0.0  # keeps the graph: no valid pixel still backpropagates


def l1_loss(pred: torch.Tensor, target: torch.Tensor,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``|pred - target|`` over valid pixels."""
    m = valid_mask(target, valid)
    if not m.any():
        return _zero(pred)
    return (pred[m] - target[m]).abs().mean()


def silog_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
               lam: float = 0.5) -> torch.Tensor:
    """Eigen's scale-invariant log loss ``mean(d^2) - lam * mean(d)^2`` over valid pixels
    (``pred`` clamped to ``EPS`` before the log)."""
    m = valid_mask(target, valid)
    if not m.any():
        return _zero(pred)
    d = torch.log(pred[m].clamp_min(EPS)) - torch.log(target[m])
    return (d * d).mean() - lam * d.mean() ** 2


def berhu_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
               c_ratio: float = 0.2) -> torch.Tensor:
    """Reverse Huber over valid pixels, threshold ``c = c_ratio * max|pred - target|``."""
    m = valid_mask(target, valid)
    if not m.any():
        return _zero(pred)
    x = (pred[m] - target[m]).abs()
    c = (c_ratio * x.max()).detach().clamp_min(EPS)
    return torch.where(x <= c, x, (x * x + c * c) / (2 * c)).mean()


def depth_loss_fn(name: str) -> Callable[..., torch.Tensor]:
    """The loss called ``name`` (one of :data:`DEPTH_LOSSES`)."""
    table = {"l1": l1_loss, "silog": silog_loss, "berhu": berhu_loss}
    if name not in table:
        raise ValueError(f"unknown depth loss {name!r}; valid: {', '.join(DEPTH_LOSSES)}")
    return table[name]


class DepthMeter:
    """Accumulates depth errors over batches; :meth:`compute` gives the dataset's metrics.

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
