"""Losses: one functional kernel per loss, thin modules, and the named-term criterion.

Shapes: logits ``[N, C, H, W]``, targets ``[N, H, W]`` int64 with ``ignore_index`` for
pixels that carry no label. Every KD term masks ignored pixels and is normalised per
valid pixel, so changing the crop or the amount of unlabelled area does not rescale it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.classmap import map_classes  # the one class-map application (re-exported)
from compress.config import tap_levels  # the one rule for tapped levels (re-exported)
from compress.multitask import TaskBalance

# ---------------------------------------------------------------- functional kernels


def valid_mask(target: torch.Tensor, ignore_index: int, size: tuple[int, int] | None = None):
    """``[N, 1, h, w]`` float mask of labelled pixels, at ``size`` (nearest) if given."""
    m = (target != ignore_index).float()[:, None]
    return m if size is None else resize_mask(m, size)


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """A ``[N, 1, h, w]`` mask at ``size`` (nearest: a pixel stays labelled or not)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="nearest")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the pixels where ``mask`` is 1 (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


def cross_entropy(logits, target, ignore_index: int = 255, class_weights=None):
    """Pixel cross-entropy over labelled pixels (mean over valid pixels, weighted)."""
    if logits.shape[1] == 1:  # binary task: BCE on the single foreground logit
        m = valid_mask(target, ignore_index)
        t = (target == 1).float()[:, None]
        loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        return (loss * m).sum() / m.sum().clamp_min(1)
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=ignore_index)


def dice_loss(logits, target, ignore_index: int = 255, eps: float = 1.0):
    """1 - soft Dice averaged over classes present in the batch (labelled pixels only)."""
    m = valid_mask(target, ignore_index)
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        onehot = (target == 1).float()[:, None]
    else:
        p = logits.softmax(1)
        t = target.clone()
        t[t == ignore_index] = 0
        onehot = F.one_hot(t, logits.shape[1]).permute(0, 3, 1, 2).float()
    p, onehot = p * m, onehot * m
    inter = (p * onehot).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = (2 * inter + eps) / (denom + eps)
    if not present.any():
        return logits.sum() * 0.0
    return 1 - dice[present].mean()


def diverged_terms(terms: dict[str, torch.Tensor], train) -> str:
    """Which named terms of a step are NaN/inf, and what to try (``train``: the recipe's
    ``train`` block), for the message of a diverged run."""
    bad = [k for k, v in terms.items() if k != "loss" and not torch.isfinite(v).all()]
    which = f"non-finite: {', '.join(bad)}" if bad else "each named term is finite"
    clip = (f"a smaller train.clip_grad (now {train.clip_grad:g})" if train.clip_grad
            else "train.clip_grad: 1.0 (now off)")
    return f"{which}; try a lower train.lr (now {train.lr:g}) or {clip}"


def match_size(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` to ``size`` when it differs (teacher at another
    resolution, or features at another stride)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def two_way(logits: torch.Tensor) -> torch.Tensor:
    """A single foreground logit ``[N, 1, H, W]`` as two-class logits ``[0, z]`` (softmax of
    them is ``[1 - sigmoid(z), sigmoid(z)]``); other logits unchanged."""
    if logits.shape[1] != 1:
        return logits
    return torch.cat([torch.zeros_like(logits), logits], 1)


def teacher_log_probs(teacher_logits, temperature: float = 1.0, class_map=None):
    """``log softmax(z_t / T)`` over the classes, through ``class_map`` (``[Ct, Cs]``,
    applied to probabilities) when given: teacher log-probabilities in student classes."""
    t = teacher_logits.float() / temperature
    if class_map is None:
        return F.log_softmax(t, dim=1)
    return torch.log(map_classes(t.softmax(1), class_map).clamp_min(1e-8))


def _kd_inputs(student_logits, teacher_logits):
    """Both logits as class scores (:func:`two_way`), the teacher's at the student's size."""
    t = match_size(two_way(teacher_logits.float()), student_logits.shape[-2:])
    return two_way(student_logits.float()), t


def kd_kl_map(student_logits, teacher_logits, temperature: float = 4.0, class_map=None):
    """Per-pixel ``KL(p_t^T || p_s^T) * T^2`` as ``[N, 1, H, W]`` (the kernel of
    :func:`kd_kl` and :func:`boundary_kd`)."""
    s, t = _kd_inputs(student_logits, teacher_logits)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = teacher_log_probs(t, temperature, class_map)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1, keepdim=True)
    return kl * temperature**2


def kd_kl(student_logits, teacher_logits, mask, temperature: float = 4.0, class_map=None):
    """Response KD: per-pixel ``KL(p_t^T || p_s^T) * T^2``, mean over valid pixels.

    Args:
        student_logits: ``[N, Cs, H, W]``.
        teacher_logits: ``[N, Ct, h, w]``; resized to the student's size.
        mask: ``[N, 1, H, W]`` valid pixels.
        class_map: optional ``[Ct, Cs]`` applied to teacher probabilities.

    A binary task's single logit is distilled as its two-way softmax (see :func:`two_way`).
    """
    return masked_mean(kd_kl_map(student_logits, teacher_logits, temperature, class_map), mask)


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the rows of ``x`` and ``y`` (``[R, K]`` -> ``[R]``):
    the cosine of the mean-centred rows, ``eps`` added to the norms' product (as DIST)."""
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return (xc * yc).sum(1) / (xc.norm(dim=1) * yc.norm(dim=1) + eps)


def dist_kd(student_logits, teacher_logits, mask, temperature: float = 1.0, beta: float = 1.0,
            gamma: float = 1.0, class_map=None):
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022)
    for segmentation: ``T^2 * (beta * inter + gamma * intra)`` with ``p = softmax(z / T)``
    at every valid pixel of the batch,

    - inter = ``1 - mean over pixels of pearson(p_s[pixel, :], p_t[pixel, :])`` (across
      classes),
    - intra = ``1 - mean over classes of pearson(p_s[:, class], p_t[:, class])`` (across
      the valid pixels of the whole batch).

    This follows hunto/DIST_KD ``segmentation/losses/dist_kd.py`` (logits flattened to
    ``[N*H*W, C]``, ``pearson`` = cosine of the centred vectors with ``eps = 1e-8``), with
    the classification code's temperature and ``T^2`` (``T = 1`` is the segmentation
    code's) and only labelled pixels kept: ignored pixels get no gradient.

    Args:
        student_logits: ``[N, Cs, H, W]`` (a single binary logit: its two-way softmax).
        teacher_logits: ``[N, Ct, h, w]``; resized to the student's size.
        mask: ``[N, 1, H, W]`` valid pixels.
        class_map: optional ``[Ct, Cs]`` applied to teacher probabilities.
    """
    s, t = _kd_inputs(student_logits, teacher_logits)
    keep = mask.flatten() > 0  # the pixel order of [N, H, W]
    if not keep.any():
        return student_logits.sum() * 0.0
    p_s = (s / temperature).softmax(1).permute(0, 2, 3, 1).reshape(-1, s.shape[1])[keep]
    p_t = teacher_log_probs(t, temperature, class_map).exp()
    p_t = p_t.permute(0, 2, 3, 1).reshape(-1, p_t.shape[1])[keep]
    inter = 1 - pearson(p_s, p_t).mean()
    intra = 1 - pearson(p_s.T, p_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def label_edges(labels: torch.Tensor, width: int = 1, ignore_index: int | None = None):
    """``[N, 1, H, W]`` float band of pixels with another class within ``width`` pixels
    (a ``(2 width + 1)^2`` window holding two different classes); ``ignore_index`` pixels
    are no class (labelled next to unlabelled is no edge).

    Args:
        labels: ``[N, H, W]`` int class map.
    """
    lab = labels.float()[:, None]
    labelled = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else (
        labels != ignore_index)[:, None]
    k = 2 * width + 1
    hi = F.max_pool2d(lab.masked_fill(~labelled, -1.0), k, stride=1, padding=width)
    lo = -F.max_pool2d(-lab.masked_fill(~labelled, float("inf")), k, stride=1, padding=width)
    return (hi > lo).float()


def boundary_kd(student_logits, teacher_logits, mask, edges, temperature: float = 4.0,
                edge_weight: float = 1.0, body_weight: float = 1.0, class_map=None):
    """Boundary-aware response KD in the spirit of BPKD (Liu et al., "BPKD: Boundary
    Privileged Knowledge Distillation for Semantic Segmentation", 2023; AkideLiu/BPKD):
    the per-pixel ``KL * T^2`` of :func:`kd_kl` averaged separately over the boundary band
    and over the body (the other valid pixels), ``edge_weight * edge + body_weight * body``.
    Each region is normalised by its own pixel count, so the thin band is not drowned by
    the body; a region without pixels adds 0. (BPKD's own edge and body losses differ in
    detail; here both regions take the plain response KL.)

    Args:
        mask: ``[N, 1, H, W]`` valid pixels.
        edges: ``[N, 1, H, W]`` boundary band (:func:`label_edges` of the labels or of the
            teacher's argmax).
    """
    kl = kd_kl_map(student_logits, teacher_logits, temperature, class_map)
    band = edges * mask
    return edge_weight * masked_mean(kl, band) + body_weight * masked_mean(kl, mask - band)


def sample_pixels(mask: torch.Tensor, pixels: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``pixels`` random valid positions per image of a ``[N, 1, h, w]`` mask:
    ``(index [N, P], keep [N, P])`` into the flattened ``h * w`` (``keep`` False where an
    image has fewer valid positions). Drawn on the CPU from ``generator`` (torch's default
    one if None)."""
    flat = mask.flatten(1) > 0
    score = torch.rand(flat.shape, generator=generator).to(mask.device).masked_fill(~flat, -1.0)
    top, index = score.topk(min(pixels, flat.shape[1]), dim=1)
    return index, top >= 0


def gather_pixels(feat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The ``[N, C, P]`` feature vectors of ``feat [N, C, h, w]`` at ``index [N, P]`` (into
    the flattened ``h * w``, e.g. from :func:`sample_pixels`)."""
    return feat.flatten(2).gather(2, index[:, None].expand(-1, feat.shape[1], -1))


def relation_kd(student_pixels, teacher_pixels, keep, temperature: float = 0.1,
                cross_image: bool = True):
    """Pixel-to-pixel relation KD (CIRKD, Yang et al., "Cross-Image Relational Knowledge
    Distillation for Semantic Segmentation", CVPR 2022; winycg/CIRKD
    ``losses/cirkd_mini_batch.py``), batch-local (no memory bank).

    The sampled feature vectors are L2-normalised along channels; for a pixel ``p`` of
    image ``i`` and an image ``j`` of the batch (``j == i`` only, unless ``cross_image``)
    the row ``softmax_q(<f_ip, f_jq> / T)`` over ``j``'s sampled pixels ``q`` is a
    distribution; the term is ``KL(teacher row || student row)``, averaged over the kept
    ``(i, p, j)`` (CIRKD's ``batchmean`` per image pair, averaged over the pairs). No
    ``T^2`` factor (as CIRKD). Cost: ``(N P)^2`` similarities with ``cross_image``,
    ``N P^2`` without.

    Args:
        student_pixels: ``[N, C, P]`` (:func:`gather_pixels`; any C: similarities do not
            depend on it).
        teacher_pixels: ``[N, C', P]`` at the same positions.
        keep: ``[N, P]`` bool, False for a padded position (neither a row nor a column).
    """
    n, p = keep.shape
    if cross_image:  # rows [N, P, N, P]: every image's kept pixels are the columns
        cols, rows = keep[None, None], keep[:, :, None] & keep.any(1)
    else:  # [N, P, 1, P]: the image's own kept pixels
        cols, rows = keep[:, None, None], keep[:, :, None]
    full = bool(keep.all())

    def log_rows(f):  # log-softmax over the last axis, in float32 (also under autocast)
        f = F.normalize(f.float(), dim=1).transpose(1, 2)  # [N, P, C]
        if cross_image:  # one [N P, N P] product, laid out as [N, P, N, P] without a copy
            flat = f.reshape(n * p, -1)
            sim = ((flat / temperature) @ flat.T).float().view(n, p, n, p)
        else:
            sim = torch.bmm(f / temperature, f.transpose(1, 2)).float()[:, :, None]
        if not full:
            sim = sim.masked_fill(~cols, torch.finfo(sim.dtype).min)
        return sim.log_softmax(-1)

    log_s = log_rows(student_pixels)
    with torch.no_grad():
        log_t = log_rows(teacher_pixels)
        p_t = log_t.exp() if full else log_t.exp() * cols
    kl = (p_t * (log_t - log_s)).sum(-1)  # [N, P, N or 1]
    if not rows.any():
        return student_pixels.sum() * 0.0
    return (kl * rows).sum() / rows.sum()


def feature_distance(student_feat, teacher_feat, mask, kind: str = "cosine"):
    """Feature KD on ``[N, C, h, w]`` maps of equal channels: ``1 - cos`` along channels or
    MSE per element; mean over valid positions (mask at that resolution)."""
    s = student_feat.float()
    t = match_size(teacher_feat.float(), s.shape[-2:])
    m = resize_mask(mask, s.shape[-2:])
    if kind == "cosine":
        d = 1 - F.cosine_similarity(s, t, dim=1, eps=1e-6)[:, None]
    elif kind == "mse":
        d = ((s - t) ** 2).mean(1, keepdim=True)
    else:
        raise ValueError(f"unknown feature distance {kind!r}; valid: cosine, mse")
    return masked_mean(d, m)


def channel_wise_kd(student_map, teacher_map, mask, temperature: float = 4.0):
    """Channel-wise distillation (Shu et al. 2021): per channel, a softmax over the valid
    spatial positions, and ``KL(teacher || student) * T^2``.

    Each (image, channel) gives one KL between two distributions over positions, which
    does not grow with the number of pixels; the term is the mean over the (image,
    channel) pairs that have a valid pixel (the paper's ``T^2 / C`` sum, averaged over
    the batch). Ignored positions take no probability mass and get no gradient.

    Args:
        student_map: ``[N, C, H, W]`` logits or (adapted) features.
        teacher_map: ``[N, C, h, w]``; resized to the student's size.
        mask: ``[N, 1, H', W']`` valid pixels (resized, nearest, to ``H, W``).
    """
    s = student_map.float()
    t = match_size(teacher_map.float(), s.shape[-2:])
    m = resize_mask(mask, s.shape[-2:])
    n, c = s.shape[:2]
    keep = m.expand_as(s).reshape(n, c, -1) > 0
    neg = torch.finfo(s.dtype).min
    s_l = (s.reshape(n, c, -1) / temperature).masked_fill(~keep, neg)
    t_l = (t.reshape(n, c, -1) / temperature).masked_fill(~keep, neg)
    p_t = t_l.softmax(-1)
    kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - s_l.log_softmax(-1))) * keep
    has = keep.any(-1)  # images with no valid pixel contribute nothing
    if not has.any():
        return s.sum() * 0.0
    return kl.sum() / has.sum() * temperature**2


# ---------------------------------------------------------------- modules


class TaskLoss(nn.Module):
    """``ce * CE + dice * Dice`` (BCE for a single-logit binary task)."""

    def __init__(self, ce: float = 1.0, dice: float = 0.0, ignore_index: int = 255,
                 class_weights: list[float] | None = None) -> None:
        super().__init__()
        self.ce_w, self.dice_w, self.ignore_index = ce, dice, ignore_index
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", w, persistent=False)

    def parts(self, logits, target) -> dict[str, torch.Tensor]:
        """The unweighted terms by name: ``ce`` (``bce`` for a binary task) and ``dice``."""
        out = {}
        if self.ce_w:
            name = "bce" if logits.shape[1] == 1 else "ce"
            out[name] = cross_entropy(logits, target, self.ignore_index, self.class_weights)
        if self.dice_w:
            out["dice"] = dice_loss(logits, target, self.ignore_index)
        return out

    def combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        w = {"ce": self.ce_w, "bce": self.ce_w, "dice": self.dice_w}
        return sum((w[k] * v for k, v in parts.items()), torch.zeros(()))

    def forward(self, logits, target) -> torch.Tensor:
        return self.combine(self.parts(logits, target)).to(logits.dtype)


@dataclass
class StepInputs:
    """What one step's KD terms read: the student's and teacher's logits and features, the
    labels and the valid-pixel mask at the student's logit size."""

    student_logits: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    student_feats: dict[str, torch.Tensor] | None = None
    teacher_feats: dict[str, torch.Tensor] | None = None


class Distiller(nn.Module):
    """All loss terms of a run, resolved once from the config into named terms.

    ``forward`` returns ``{"loss": total, "task": ..., "kd": ..., "feat": ..., "cwd": ...,
    "dist": ..., "boundary": ..., "relation": ...}`` (only the enabled terms); the total is
    ``sum(weight[name] * term[name])`` over the table :attr:`weights` (``w_task``,
    ``w_kd``, ``w_feat``, ``w_cwd``, ``w_dist``, ``w_boundary``, ``w_relation``): response
    KD (:func:`kd_kl`), feature KD (:func:`feature_distance`), CWD
    (:func:`channel_wise_kd`), DIST (:func:`dist_kd`), boundary / body KD
    (:func:`boundary_kd`) and pixel-relation KD (:func:`relation_kd`).
    Holds the learnable 1x1 adapters that map student feature channels onto the teacher's;
    they train with the student and are never saved with it. The KD step around it (the
    models, the teacher's outputs) is :class:`compress.distill.DistillationTask`.

    A multi-task student (``task_weights`` given, e.g. ``{"seg": 0.5, "depth": 0.5}``)
    gives a dict of outputs: the terms above apply to its ``seg`` logits and add up to the
    ``seg`` term; ``depth`` is ``depth_loss(pred, target)`` over the valid pixels (target
    > 0) of the batch; :class:`compress.multitask.TaskBalance` (``balance``: fixed or
    uncertainty, its parameters trained and saved with the adapters) combines the tasks
    of positive weight into ``loss``. With uncertainty weighting the weights in use are
    logged as ``w_<task>``.
    """

    def __init__(self, *, task: TaskLoss, w_task: float = 1.0, w_kd: float = 0.0,
                 temperature: float = 4.0, w_feat: float = 0.0, feat_levels=(),
                 feat_kind: str = "cosine", w_cwd: float = 0.0, cwd_temperature: float = 4.0,
                 cwd_levels=(), w_dist: float = 0.0, dist_temperature: float = 1.0,
                 dist_beta: float = 1.0, dist_gamma: float = 1.0, w_boundary: float = 0.0,
                 boundary_temperature: float = 4.0, boundary_edge_weight: float = 1.0,
                 boundary_body_weight: float = 1.0, boundary_source: str = "labels",
                 boundary_width: int = 1, w_relation: float = 0.0,
                 relation_level: str = "decoder", relation_pixels: int = 256,
                 relation_temperature: float = 0.1, relation_cross_image: bool = True,
                 relation_seed: int = 0,
                 student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, int] | None = None,
                 class_map: torch.Tensor | None = None, ignore_index: int = 255,
                 task_weights: dict[str, float] | None = None, balance: str = "fixed",
                 depth_loss=None) -> None:
        super().__init__()
        self.task_weights = dict(task_weights or {})
        self.depth_loss = depth_loss
        self.balance = None
        if self.task_weights:
            active = {k: w for k, w in self.task_weights.items() if w > 0}
            self.balance = TaskBalance(active, balance)
        if boundary_source not in BOUNDARY_SOURCES:
            raise ValueError(f"unknown boundary source {boundary_source!r}; valid: "
                             f"{', '.join(BOUNDARY_SOURCES)}")
        self.task = task
        # name -> weight: the one table the total is summed from (0: the term is off)
        self.weights = {"task": w_task, "kd": w_kd, "feat": w_feat, "cwd": w_cwd,
                        "dist": w_dist, "boundary": w_boundary, "relation": w_relation}
        self.temperature = temperature
        self.feat_levels, self.feat_kind = list(feat_levels), feat_kind
        self.cwd_temperature, self.cwd_levels = cwd_temperature, list(cwd_levels)
        self.dist_args = {"temperature": dist_temperature, "beta": dist_beta, "gamma": dist_gamma}
        self.boundary_args = {"temperature": boundary_temperature,
                              "edge_weight": boundary_edge_weight,
                              "body_weight": boundary_body_weight}
        self.boundary_source, self.boundary_width = boundary_source, boundary_width
        self.relation_level, self.relation_pixels = relation_level, relation_pixels
        self.relation_args = {"temperature": relation_temperature,
                              "cross_image": relation_cross_image}
        self.relation_seed = relation_seed
        if w_relation:  # the draw count: saved with the adapters, so a resume draws the same
            self.register_buffer("relation_draws", torch.zeros((), dtype=torch.long))
        self.ignore_index = ignore_index
        self.register_buffer("class_map", class_map, persistent=False)
        self.adapters = nn.ModuleDict()
        # what the student and teacher must tap
        self.feature_levels = tap_levels(self.feat_levels if w_feat else [],
                                         self.cwd_levels if w_cwd else [],
                                         [relation_level] if w_relation else [])
        for lv in self.feature_levels:
            cs, ct = (student_channels or {})[lv], (teacher_channels or {})[lv]
            self.adapters[lv] = nn.Conv2d(cs, ct, 1, bias=False) if cs != ct else nn.Identity()

    def forward(self, student_logits, target, teacher_logits=None, student_feats=None,
                teacher_feats=None, depth=None) -> dict[str, torch.Tensor]:
        if isinstance(student_logits, dict):
            return self._multitask(student_logits, target, teacher_logits, depth)
        return self._seg_terms(student_logits, target, teacher_logits, student_feats,
                               teacher_feats)

    def _multitask(self, out: dict[str, torch.Tensor], target, teacher_logits,
                   depth) -> dict[str, torch.Tensor]:
        """The seg terms on ``out["seg"]``, each depth task's loss, their balance."""
        terms: dict[str, torch.Tensor] = {}
        losses: dict[str, torch.Tensor] = {}
        if self.task_weights.get("seg", 0) > 0:
            seg = self._seg_terms(out["seg"], target, teacher_logits, None, None)
            losses["seg"] = seg.pop("loss")
            terms.update(seg)
            terms["seg"] = losses["seg"]
        for name in self.task_weights:
            if name == "seg" or self.task_weights[name] <= 0:
                continue
            if depth is None:
                raise ValueError("a multi-task step needs the batch's depth maps")
            losses[name] = self.depth_loss(out[name].float(), depth.float())
            terms[name] = losses[name]
        terms["loss"] = self.balance(losses)
        if self.balance.mode == "uncertainty":
            terms.update({f"w_{k}": torch.tensor(v) for k, v in self.balance.weights().items()})
        return terms

    def _seg_terms(self, student_logits, target, teacher_logits=None, student_feats=None,
                   teacher_feats=None) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        task_parts: dict[str, torch.Tensor] = {}
        if self.weights["task"]:
            task_parts = self.task.parts(student_logits, target)
            terms["task"] = self.task.combine(task_parts).to(student_logits.device)
        mask = valid_mask(target, self.ignore_index, student_logits.shape[-2:])
        step = StepInputs(student_logits, target, mask, teacher_logits, student_feats,
                          teacher_feats)
        for name, term in self.KD_TERMS.items():
            if self.weights[name]:
                terms[name] = term(self, step)
        terms["loss"] = sum(self.weights[k] * v for k, v in terms.items())
        # each task term on its own too (logged, not added again): task_ce / task_bce / task_dice
        terms.update({f"task_{k}": v.detach() for k, v in task_parts.items()})
        return terms

    # ------------------------------------------------ the KD terms, one method each

    def _adapted(self, step: StepInputs, level: str) -> torch.Tensor:
        return self.adapters[level](step.student_feats[level])

    def _response(self, step: StepInputs) -> torch.Tensor:
        return kd_kl(step.student_logits, step.teacher_logits, step.mask, self.temperature,
                     self.class_map)

    def _feature(self, step: StepInputs) -> torch.Tensor:
        return torch.stack([
            feature_distance(self._adapted(step, lv), step.teacher_feats[lv], step.mask,
                             self.feat_kind)
            for lv in self.feat_levels
        ]).mean()

    def _cwd(self, step: StepInputs) -> torch.Tensor:
        parts = []
        for lv in self.cwd_levels:
            if lv == "logits":  # a class map maps the logits through log-probabilities
                t = step.teacher_logits
                if self.class_map is not None:
                    t = teacher_log_probs(t, 1.0, self.class_map)
                parts.append(channel_wise_kd(step.student_logits, t, step.mask,
                                             self.cwd_temperature))
            else:
                parts.append(channel_wise_kd(self._adapted(step, lv), step.teacher_feats[lv],
                                             step.mask, self.cwd_temperature))
        return torch.stack(parts).mean()

    def _dist(self, step: StepInputs) -> torch.Tensor:
        return dist_kd(step.student_logits, step.teacher_logits, step.mask,
                       class_map=self.class_map, **self.dist_args)

    def _boundary(self, step: StepInputs) -> torch.Tensor:
        labels = BOUNDARY_SOURCES[self.boundary_source](self, step)
        edges = label_edges(labels, self.boundary_width, ignore_index=-1)
        return boundary_kd(step.student_logits, step.teacher_logits, step.mask, edges,
                           class_map=self.class_map, **self.boundary_args)

    def _relation(self, step: StepInputs) -> torch.Tensor:
        lv = self.relation_level
        s, t = step.student_feats[lv], step.teacher_feats[lv]
        # the positions come from (seed, draw count) alone: nothing else that uses torch's
        # RNG (a resume's teacher preflight, a loader) can shift them
        g = torch.Generator().manual_seed(self.relation_seed * 1_000_003
                                          + int(self.relation_draws))
        self.relation_draws += 1
        index, keep = sample_pixels(resize_mask(step.mask, s.shape[-2:]), self.relation_pixels, g)
        # the 1x1 adapter acts per pixel: on the sampled ones only
        s_pix = self.adapters[lv](gather_pixels(s, index)[..., None])[..., 0]
        t_pix = gather_pixels(match_size(t.float(), s.shape[-2:]), index)
        return relation_kd(s_pix, t_pix, keep, **self.relation_args)

    # name -> the method computing that KD term from the step's inputs
    KD_TERMS: ClassVar[dict] = {"kd": _response, "feat": _feature, "cwd": _cwd,
                                "dist": _dist, "boundary": _boundary, "relation": _relation}


def _label_source(d: Distiller, step: StepInputs) -> torch.Tensor:
    """The labels at the student's logit size (nearest), ignored pixels as -1."""
    t = step.target
    if tuple(t.shape[-2:]) != tuple(step.student_logits.shape[-2:]):
        t = F.interpolate(t[:, None].float(), size=step.student_logits.shape[-2:],
                          mode="nearest")[:, 0].long()
    return t.masked_fill(t == d.ignore_index, -1)


@torch.no_grad()
def _teacher_source(d: Distiller, step: StepInputs) -> torch.Tensor:
    """The teacher's argmax in student classes at the student's logit size (a class at
    every pixel; the valid mask still limits both regions to labelled pixels)."""
    _, t = _kd_inputs(step.student_logits, step.teacher_logits)
    return teacher_log_probs(t, 1.0, d.class_map).argmax(1)


# where boundary KD's edges come from (kd.boundary.source)
BOUNDARY_SOURCES = {"labels": _label_source, "teacher": _teacher_source}
