"""One knowledge-distillation step in one object (timm's ``timm/task/distillation.py``).

:class:`DistillationTask` holds the student, the frozen teacher (live :class:`Teacher` or
:class:`compress.cache.CachedTeacher`, one interface), the normalisation conversion (inside
the teacher), the adapters and the loss terms (:class:`compress.losses.Distiller`); its
forward returns the named terms and the training loop (:mod:`compress.train`) only calls
it. Below it: loading and checking the teacher (weights, label map, feature channels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from compress.config import ConfigError, RunConfig
from compress.losses import Distiller, match_size, teacher_log_probs
from compress.models import (
    forward_with_features,
    load_adapter,
    load_model,
    make_spec,
    model_references,
    read_checkpoint,
)
from compress.multitask import seg_logits
from compress.spec import ModelSpec

log = logging.getLogger("compress")


class DistillationTask(nn.Module):
    """Student + frozen teacher + loss terms: one call is one KD step's forward.

    ``task(images, target, batch)`` returns the named terms of :class:`Distiller`:
    ``loss`` (the weighted total, the one to backpropagate), the enabled terms ``task``,
    ``kd``, ``feat``, ``cwd``, ``dist``, ``boundary``, ``relation``, and the parts of the
    task term ``task_ce`` / ``task_bce`` / ``task_dice`` (logged, not added again). These
    are the names ``metrics.csv`` (``train_<name>``) and TensorBoard (``train/<name>``)
    show.

    The teacher is held outside the module tree: ``train()`` never reaches it,
    ``parameters()`` (so the optimizer and DDP) never include it, and it runs under
    ``no_grad``. The student and the criterion (with its adapters) are submodules.

    Args:
        student: the student (DDP-wrapped in a multi-process run).
        criterion: the loss terms and adapters.
        teacher: a :class:`Teacher` or ``CachedTeacher``; None for plain training.
        amp_dtype: autocast dtype for the student and the terms (None: full precision).
    """

    def __init__(self, student: nn.Module, criterion: Distiller, teacher=None,
                 amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.student, self.criterion = student, criterion
        self.teacher = teacher  # a plain attribute, not a submodule (see above)
        self.amp_dtype = amp_dtype
        self.levels = criterion.feature_levels

    @property
    def distilling(self) -> bool:
        """Whether the step runs the teacher (set-up gives one iff ``cfg.kd.enabled``)."""
        return self.teacher is not None

    def forward(self, images: torch.Tensor, target: torch.Tensor,
                batch: dict | None = None) -> dict[str, torch.Tensor]:
        """Args: ``images [N, 3, H, W]`` (student normalisation, on the device), ``target
        [N, H, W]``, ``batch`` the collated batch they came from (the cached teacher
        finds its logits through its ``index`` and ``geometry``; a multi-task student's
        depth maps are its ``"depth"``, ``[N, H, W]``, 0 = no value)."""
        t_logits = t_feats = None
        if self.teacher is not None:
            t_logits, t_feats = self.teacher(images, batch)
        depth = None
        if batch is not None and "depth" in batch:
            depth = batch["depth"].to(images.device, non_blocking=True)
        with torch.autocast(images.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            s_out, s_feats = forward_with_features(self.student, images, self.levels)
            if isinstance(s_out, dict):  # a multi-task student: {"seg": logits, "depth": ...}
                return self.criterion(s_out, target, t_logits, depth=depth)
            return self.criterion(s_out, target, t_logits, s_feats, t_feats)


def recipe_references(cfg: RunConfig) -> list[tuple[str, str]]:
    """``(key, name)`` of what the recipe's models name outside the toolkit's registries
    (:func:`compress.models.model_references`: a factory, an external encoder, a kwarg off
    the allow-list), keys dotted as in the recipe (``teacher.model.factory``)."""
    out = []
    for prefix, m in (("model", cfg.model), ("teacher.model", cfg.teacher.model)):
        if m is not None:
            out += [(f"{prefix}.{key}", name)
                    for key, name in model_references(m.arch, m.encoder, m.factory, m.kwargs)]
    return out


def recipe_factories(cfg: RunConfig) -> set[str]:
    """What the user's own recipe names outside the registries (custom factories, ...):
    trusted, they wrote it. A recipe read back from a run dir is not theirs: see
    :func:`compress.train.check_run_recipe`."""
    return {name for _, name in recipe_references(cfg)}


class Teacher:
    """A frozen teacher: eval mode, no grad, never in the optimizer, never wrapped in DDP.

    ``teacher(images)`` returns ``(logits [N, Ct, H, W], {level: feature})`` for student-
    normalised ``images [N, 3, H, W]``: they are converted to the teacher's normalisation
    first (``x_t = x_s * a + b``, one fused multiply-add) and, when ``H, W`` differ from
    the teacher's ``spec.input_size``, resized to it (bilinear) so a teacher with a fixed
    input size (a positional embedding) runs; its logits come back at ``H, W``, its
    features stay at the teacher's own size (the KD terms resize them). ``batch`` (where
    the images came from) is what :class:`compress.cache.CachedTeacher`, which shares
    this interface, needs; the live teacher ignores it. With ``class_map`` set, :meth:`predict` returns
    log-probabilities over the student's classes (what preflight scores and figures show).
    """

    class_map: torch.Tensor | None = None

    def __init__(self, model: nn.Module, spec: ModelSpec, student_spec: ModelSpec,
                 levels: list[str],
                 half: bool = False, device: torch.device | str = "cpu") -> None:
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.spec, self.levels, self.device = spec, list(levels), torch.device(device)
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.model.to(self.dtype)
        s_mean, s_std = torch.tensor(student_spec.mean), torch.tensor(student_spec.std)
        t_mean, t_std = torch.tensor(spec.mean), torch.tensor(spec.std)
        # x_t = (x_s * std_s + mean_s - mean_t) / std_t  ==  x_s * a + b
        self.a = (s_std / t_std).view(1, 3, 1, 1).to(self.device)
        self.b = ((s_mean - t_mean) / t_std).view(1, 3, 1, 1).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: dict | None = None):
        x = images * self.a + self.b
        resized = tuple(x.shape[-2:]) != tuple(self.spec.input_size)
        logits, feats = forward_with_features(
            self.model, match_size(x, self.spec.input_size).to(self.dtype), self.levels)
        logits = seg_logits(logits).float()
        if resized:  # back to the student's size (unresized, they are what the model gives)
            logits = match_size(logits, images.shape[-2:])
        return logits, {k: v.float() for k, v in feats.items()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[N, Ct, H, W]``, or ``[N, Cs, H, W]`` log-probabilities in the
        student's classes when a class map is set."""
        logits = self(images)[0]
        if self.class_map is None:
            return logits
        return teacher_log_probs(logits, 1.0, self.class_map.to(logits.device))


def load_teacher(cfg: RunConfig, s_spec: ModelSpec, levels: list[str], device
                 ) -> tuple[Teacher, ModelSpec]:
    """Load the teacher checkpoint (a segcompress checkpoint, or a plain state_dict with
    ``teacher.model``) and check that every weight loaded."""
    tc = cfg.teacher
    if not tc.checkpoint:
        raise ConfigError("distillation needs teacher.checkpoint (or teacher.train_epochs)")
    spec = None
    if not Path(tc.checkpoint).is_file():
        raise FileNotFoundError(f"teacher.checkpoint not found: {tc.checkpoint} (give a "
                                "checkpoint, or teacher.train_epochs > 0 to train one)")
    ckpt = read_checkpoint(tc.checkpoint)
    if ckpt["spec"] is None and tc.model is None:
        raise ConfigError(f"teacher.checkpoint {tc.checkpoint} is a plain state_dict without a "
                         "model spec: set teacher.model (arch, encoder, decoder_channels)")
    if ckpt["spec"] is None:  # a plain state_dict: the architecture comes from teacher.model
        m = tc.model
        classes = m.classes or _head_classes(ckpt["state_dict"]) or s_spec.classes
        names = s_spec.class_names if classes == s_spec.classes else None
        spec = make_spec(arch=m.arch, encoder=m.encoder, classes=classes,
                         class_names=names, ignore_index=s_spec.ignore_index,
                         decoder_channels=m.decoder_channels, factory=m.factory, kwargs=m.kwargs,
                         mean=m.mean, std=m.std,
                         input_size=tc.input_size or s_spec.input_size)
    model, spec = load_model(tc.checkpoint, spec=spec,
                             strict=not (tc.allow_missing_keys or tc.adapter),
                             return_spec=True, trusted=recipe_factories(cfg))
    _check_teacher_weights(model, tc)
    return Teacher(model, spec, s_spec, levels, tc.half, device), spec


def _check_teacher_weights(model: nn.Module, tc) -> None:
    """Load ``teacher.adapter`` over the base weights, then refuse (or, with
    ``teacher.allow_missing_keys``, warn with the count) the weights neither file held."""
    report, total = dict(model.load_report), len(model.state_dict())
    source = tc.checkpoint
    if tc.adapter:
        if not Path(tc.adapter).is_file():
            raise FileNotFoundError(f"teacher.adapter not found: {tc.adapter}")
        from_adapter = load_adapter(model, tc.adapter)
        base = total - len(report["missing"])
        replaced = len(set(from_adapter) - set(report["missing"]))  # the base had them too
        report["missing"] = [k for k in report["missing"] if k not in set(from_adapter)]
        log.info(f"teacher weights: {base} tensors from the base {tc.checkpoint}, "
                 f"{len(from_adapter)} from the adapter {tc.adapter}"
                 + (f" ({replaced} of them replace base tensors)" if replaced else ""))
        source = f"{tc.checkpoint} + adapter {tc.adapter}"
    missing, unexpected = report["missing"], report["unexpected"]
    if (missing or unexpected) and not tc.allow_missing_keys:
        parts = [f"{len(missing)} of {total} weights missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise ConfigError(f"teacher {source}: {'; '.join(parts)}: refusing to run weights on "
                         "their initial values (teacher.allow_missing_keys=true to allow it)")
    if missing:  # allowed by teacher.allow_missing_keys, never silently
        log.warning(f"teacher {source}: {len(missing)} of {total} weights missing from "
                    f"{'both files' if tc.adapter else 'the file'} (e.g. {missing[0]}) run on "
                    "their random initial values (teacher.allow_missing_keys=true)")
    if unexpected:
        log.warning(f"teacher {tc.checkpoint}: {len(unexpected)} tensors in the file "
                    f"fit no weight of the model (e.g. {unexpected[0]}) and were ignored")


def _head_classes(state: dict) -> int | None:
    """The class count of a plain smp state_dict, from its segmentation head's bias."""
    for key in ("segmentation_head.0.bias", "module.segmentation_head.0.bias"):
        if key in state and state[key].ndim == 1:
            return int(state[key].shape[0])
    return None


def check_label_maps(t_spec: ModelSpec, s_spec: ModelSpec, class_map: torch.Tensor | None
                     ) -> list[str]:
    """Preflight: do the teacher's classes line up with the student's? Returns summary
    lines; raises when they silently would not (same count, different names, no map)."""
    t_names, s_names = list(t_spec.class_names), list(s_spec.class_names)
    if class_map is None:
        generic = all(n == f"class_{i}" for i, n in enumerate(t_names))
        diff = [(i, t, s) for i, (t, s) in enumerate(zip(t_names, s_names))
                if t.lower() != s.lower()]
        if diff and not generic:
            shown = ", ".join(f"{i}: teacher {t!r} / student {s!r}" for i, t, s in diff[:6])
            raise ConfigError(f"teacher and student class names differ ({shown}): give "
                             "kd.class_map (teacher class name -> student class name) or fix "
                             "class_names")
        return [f"label map: identity, {len(s_names)} classes"
                + (" (teacher names unknown, assumed the same order)" if generic else "")]
    lines = [f"label map: {len(t_names)} teacher -> {len(s_names)} student classes"]
    for j, s in enumerate(s_names):
        src = [f"{t_names[i]} {class_map[i, j]:.2f}" for i in range(len(t_names)) if class_map[i, j] > 0]
        lines.append(f"  {s:<16} <- " + (", ".join(src) if src else
                     "nothing: KD pushes this class towards 0 (check kd.class_map)"))
    ignored = [t for i, t in enumerate(t_names) if not class_map[i].any()]
    if ignored:
        lines.append(f"  {'(ignored)':<16} <- {', '.join(ignored)}")
    return lines


def feature_channels(model: nn.Module, spec: ModelSpec, levels: list[str], device
                     ) -> dict[str, int]:
    """Channels of each tapped level, from one forward pass at the model's
    ``spec.input_size`` (a teacher may accept no other; also checks strides)."""
    if not levels:
        return {}
    h, w = spec.input_size
    x = torch.zeros(1, 3, h, w, device=device, dtype=next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, feats = forward_with_features(model, x, levels)
    model.train(was_training)
    from compress.models import LEVEL_STRIDES

    out = {}
    for lv, f in feats.items():
        stride = LEVEL_STRIDES.get(lv)
        if stride and tuple(f.shape[-2:]) != (h // stride, w // stride):
            raise ConfigError(f"feature level {lv!r} taps a tensor of size {tuple(f.shape[-2:])} "
                             f"for a {h}x{w} input: expected stride {stride}")
        out[lv] = f.shape[1]
    return out
