"""Losses: one functional kernel per loss, thin modules, and the named-term criterion.

Shapes: logits ``[N, C, H, W]``, targets ``[N, H, W]`` int64 with ``ignore_index`` for
pixels that carry no label. Every KD term masks ignored pixels and is normalised per
valid pixel, so changing the crop or the amount of unlabelled area does not rescale it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.classmap import map_classes  # the one class-map application (re-exported)

# ---------------------------------------------------------------- functional kernels


def valid_mask(target: torch.Tensor, ignore_index: int, size: tuple[int, int] | None = None):
    """``[N, 1, h, w]`` float mask of labelled pixels, at ``size`` (nearest) if given."""
    m = (target != ignore_index).float()[:, None]
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    return m


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


def kd_kl(student_logits, teacher_logits, mask, temperature: float = 4.0, class_map=None):
    """Response KD: per-pixel ``KL(p_t^T || p_s^T) * T^2``, mean over valid pixels.

    Args:
        student_logits: ``[N, Cs, H, W]``.
        teacher_logits: ``[N, Ct, h, w]``; resized to the student's size.
        mask: ``[N, 1, H, W]`` valid pixels.
        class_map: optional ``[Ct, Cs]`` applied to teacher probabilities.

    A binary task's single logit is distilled as its two-way softmax (see :func:`two_way`).
    """
    t = match_size(two_way(teacher_logits.float()), student_logits.shape[-2:])
    log_p_s = F.log_softmax(two_way(student_logits.float()) / temperature, dim=1)
    if class_map is None:
        log_p_t = F.log_softmax(t / temperature, dim=1)
    else:
        log_p_t = torch.log(map_classes((t / temperature).softmax(1), class_map).clamp_min(1e-8))
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1, keepdim=True)
    return (kl * mask).sum() / mask.sum().clamp_min(1) * temperature**2


def feature_distance(student_feat, teacher_feat, mask, kind: str = "cosine"):
    """Feature KD on ``[N, C, h, w]`` maps of equal channels: ``1 - cos`` along channels or
    MSE per element; mean over valid positions (mask at that resolution)."""
    s = student_feat.float()
    t = match_size(teacher_feat.float(), s.shape[-2:])
    m = F.interpolate(mask, size=s.shape[-2:], mode="nearest") if mask.shape[-2:] != s.shape[-2:] else mask
    if kind == "cosine":
        d = 1 - F.cosine_similarity(s, t, dim=1, eps=1e-6)[:, None]
    elif kind == "mse":
        d = ((s - t) ** 2).mean(1, keepdim=True)
    else:
        raise ValueError(f"unknown feature distance {kind!r}; valid: cosine, mse")
    return (d * m).sum() / m.sum().clamp_min(1)


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
    m = F.interpolate(mask, size=s.shape[-2:], mode="nearest") if mask.shape[-2:] != s.shape[-2:] else mask
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


def tap_levels(feat_levels, cwd_levels) -> list[str]:
    """Feature levels a run must tap: the feature-KD levels plus CWD's non-logit levels."""
    return sorted(set(feat_levels) | {lv for lv in cwd_levels if lv != "logits"})


class Distiller(nn.Module):
    """All loss terms of a run, resolved once from the config into named terms.

    ``forward`` returns ``{"loss": total, "task": ..., "kd": ..., "feat": ..., "cwd": ...}``
    (only the enabled terms); total = ``w_task*task + w_kd*kd + w_feat*feat + w_cwd*cwd``.
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
                 cwd_levels=(), student_channels: dict[str, int] | None = None,
                 teacher_channels: dict[str, int] | None = None,
                 class_map: torch.Tensor | None = None, ignore_index: int = 255,
                 task_weights: dict[str, float] | None = None, balance: str = "fixed",
                 depth_loss=None) -> None:
        super().__init__()
        self.task_weights = dict(task_weights or {})
        self.depth_loss = depth_loss
        self.balance = None
        if self.task_weights:
            from compress.multitask import TaskBalance

            active = {k: w for k, w in self.task_weights.items() if w > 0}
            self.balance = TaskBalance(active, balance)
        self.task, self.w_task = task, w_task
        self.w_kd, self.temperature = w_kd, temperature
        self.w_feat, self.feat_levels, self.feat_kind = w_feat, list(feat_levels), feat_kind
        self.w_cwd, self.cwd_temperature, self.cwd_levels = w_cwd, cwd_temperature, list(cwd_levels)
        self.ignore_index = ignore_index
        self.register_buffer("class_map", class_map, persistent=False)
        self.adapters = nn.ModuleDict()
        # what the student and teacher must tap
        self.feature_levels = tap_levels(self.feat_levels if w_feat else [],
                                         self.cwd_levels if w_cwd else [])
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
        if self.w_task:
            task_parts = self.task.parts(student_logits, target)
            terms["task"] = self.task.combine(task_parts).to(student_logits.device)
        mask = valid_mask(target, self.ignore_index, student_logits.shape[-2:])
        if self.w_kd:
            terms["kd"] = kd_kl(student_logits, teacher_logits, mask, self.temperature, self.class_map)
        if self.w_feat:
            terms["feat"] = torch.stack([
                feature_distance(self.adapters[lv](student_feats[lv]), teacher_feats[lv], mask,
                                 self.feat_kind)
                for lv in self.feat_levels
            ]).mean()
        if self.w_cwd:
            parts = []
            for lv in self.cwd_levels:
                if lv == "logits":
                    t = teacher_logits
                    if self.class_map is not None:  # map logits through log-probabilities
                        t = torch.log(map_classes(t.float().softmax(1), self.class_map).clamp_min(1e-8))
                    parts.append(channel_wise_kd(student_logits, t, mask, self.cwd_temperature))
                else:
                    parts.append(channel_wise_kd(self.adapters[lv](student_feats[lv]),
                                                 teacher_feats[lv], mask, self.cwd_temperature))
            terms["cwd"] = torch.stack(parts).mean()
        weights = {"task": self.w_task, "kd": self.w_kd, "feat": self.w_feat, "cwd": self.w_cwd}
        terms["loss"] = sum(weights[k] * v for k, v in terms.items())
        # each task term on its own too (logged, not added again): task_ce / task_bce / task_dice
        terms.update({f"task_{k}": v.detach() for k, v in task_parts.items()})
        return terms
