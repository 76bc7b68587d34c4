"""Dense regression of depth: the losses a depth head trains with, on valid pixels only
(its metrics: :class:`compress.metrics.DepthMeter`).

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

"""

from __future__ import annotations

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
