"""One knowledge-distillation step in one object (timm's ``timm/task/distillation.py``).

:class:`DistillationTask` holds the student, the frozen teacher (live :class:`Teacher` or
:class:`compress.cache.CachedTeacher`, one interface), the normalisation conversion (inside
the teacher), the adapters and the loss terms (:class:`compress.losses.Distiller`); its
forward returns the named terms and the training loop (:mod:`compress.train`) only calls
it. Below it: what the recipe names: the student's spec (:func:`student_spec`), the loss
terms (:func:`create_distiller`); loading and checking the teacher (weights, label map,
feature channels, its score: :func:`preflight_teacher`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from compress.classmap import kd_class_map
from compress.config import ConfigError, RunConfig
from compress.depth_losses import berhu_loss, depth_loss_fn, silog_loss
from compress.evaluate import evaluate
from compress.hf import load_hf_model
from compress.losses import Distiller, TaskLoss, match_size, teacher_log_probs
from compress.metrics import weak_teacher
from compress.models import (
    LEVEL_STRIDES,
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
    :func:`compress.rundir.check_run_recipe`."""
    return {name for _, name in recipe_references(cfg)}


def student_spec(cfg: RunConfig, class_names: list[str], last_state: dict | None = None) -> ModelSpec:
    """The student's spec: from the recipe's model keys, or from ``model.init_from``'s
    checkpoint (a resume reads it from the run's own ``last.pt``)."""
    m = cfg.model
    if m.init_from:
        return _init_spec(m.init_from, cfg, class_names, last_state)
    if m.classes is not None and m.classes != len(class_names):
        raise ConfigError(f"model.classes={m.classes} but the data has {len(class_names)} "
                         f"classes ({', '.join(class_names[:8])})")
    spec = make_spec(
        arch=m.arch, encoder=m.encoder, classes=len(class_names), class_names=class_names,
        ignore_index=cfg.ignore_index, decoder_channels=m.decoder_channels, factory=m.factory,
        kwargs=m.kwargs, mean=m.mean, std=m.std, input_size=tuple(cfg.data.size),
    )
    return replace(spec, tasks=m.tasks) if m.tasks else spec  # a multi-task student


def _init_spec(path: str, cfg: RunConfig, class_names: list[str],
               last_state: dict | None) -> ModelSpec:
    if last_state is not None and last_state.get("spec"):
        return last_state["spec"]
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from not found: {path}")
    spec = read_checkpoint(path)["spec"]
    if spec is None:
        raise ConfigError(f"model.init_from {path} is a plain state_dict: give a segcompress "
                         "checkpoint (its spec rebuilds the student)")
    names = [n.lower() for n in spec.class_names]
    generic = names == [f"class_{i}" for i in range(len(names))]  # names unknown: count only
    if (names != [n.lower() for n in class_names]
            and not (generic and len(names) == len(class_names))):
        raise ConfigError(f"model.init_from {path}: its classes ({', '.join(spec.class_names[:6])}"
                         f"{' ...' if len(names) > 6 else ''}) are not the data's "
                         f"({', '.join(class_names[:6])}{' ...' if len(class_names) > 6 else ''})")
    return replace(spec, class_names=list(class_names), ignore_index=cfg.ignore_index,
                   input_size=[int(s) for s in cfg.data.size])


def create_distiller(cfg: RunConfig, student_channels: dict[str, int],
                     teacher_channels: dict[str, int], class_map: torch.Tensor | None
                     ) -> Distiller:
    """The recipe's loss terms as one :class:`compress.losses.Distiller`: the task loss,
    every ``kd.<term>`` with its settings, the adapters for the given feature channels
    (``{level: channels}``, from :func:`feature_channels`), the teacher's ``class_map``,
    and a multi-task run's task weights and depth loss."""
    kd = cfg.kd
    return Distiller(
        task=TaskLoss(cfg.loss.ce, cfg.loss.dice, cfg.ignore_index, cfg.loss.class_weights),
        w_task=cfg.w_task, w_kd=kd.response.weight, temperature=kd.response.temperature,
        w_feat=kd.feature.weight, feat_levels=kd.feature.levels, feat_kind=kd.feature.kind,
        w_cwd=kd.cwd.weight, cwd_temperature=kd.cwd.temperature, cwd_levels=kd.cwd.levels,
        w_dist=kd.dist.weight, dist_temperature=kd.dist.temperature, dist_beta=kd.dist.beta,
        dist_gamma=kd.dist.gamma, w_boundary=kd.boundary.weight,
        boundary_temperature=kd.boundary.temperature,
        boundary_edge_weight=kd.boundary.edge_weight,
        boundary_body_weight=kd.boundary.body_weight, boundary_source=kd.boundary.source,
        boundary_width=kd.boundary.width, w_relation=kd.relation.weight,
        relation_level=kd.relation.level, relation_pixels=kd.relation.pixels,
        relation_temperature=kd.relation.temperature,
        relation_cross_image=kd.relation.cross_image, relation_seed=cfg.seed,
        student_channels=student_channels, teacher_channels=teacher_channels,
        class_map=class_map, ignore_index=cfg.ignore_index,
        task_weights=cfg.task_weights, balance=cfg.multitask.balance,
        depth_loss=_depth_loss(cfg),
    )


def _depth_loss(cfg: RunConfig):
    """``multitask.depth_loss`` with its parameter, or None for a single-task run."""
    if not cfg.model.tasks:
        return None
    mt = cfg.multitask
    if mt.depth_loss == "silog":
        return partial(silog_loss, lam=mt.silog_lambda)
    if mt.depth_loss == "berhu":
        return partial(berhu_loss, c_ratio=mt.berhu_c)
    return depth_loss_fn(mt.depth_loss)


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
    """Load the teacher the recipe names (:data:`TEACHER_LOADERS`, by ``teacher.kind``:
    ``teacher.checkpoint`` or ``teacher.hf``), every weight checked, as a frozen
    :class:`Teacher`."""
    tc = cfg.teacher
    model, spec = TEACHER_LOADERS[tc.kind](cfg, s_spec, levels, device)
    return Teacher(model, spec, s_spec, levels, tc.half, device), spec


def _hf_teacher(cfg: RunConfig, s_spec: ModelSpec, levels: list[str], device
                ) -> tuple[nn.Module, ModelSpec]:
    """``teacher.hf``: a transformers model (:func:`compress.hf.load_hf_model`), run at its
    processor's size (or ``teacher.input_size``; the student's when the processor has none)."""
    tc = cfg.teacher
    return load_hf_model(tc.hf, what="teacher.hf", device=device, input_size=tc.input_size,
                         fallback_size=tuple(s_spec.input_size), levels=levels,
                         allow_missing_keys=tc.allow_missing_keys)


def _checkpoint_teacher(cfg: RunConfig, s_spec: ModelSpec, levels: list[str], device
                        ) -> tuple[nn.Module, ModelSpec]:
    """``teacher.checkpoint``: a segcompress checkpoint, or a plain state_dict with
    ``teacher.model``; every weight loaded (or ``teacher.adapter``'s), or refused."""
    tc = cfg.teacher
    if not tc.checkpoint:
        raise ConfigError("distillation needs teacher.checkpoint (or teacher.train_epochs, or "
                          "teacher.hf: a transformers model folder)")
    spec = None
    if not Path(tc.checkpoint).is_file():
        raise FileNotFoundError(f"teacher.checkpoint not found: {tc.checkpoint} (give a "
                                "checkpoint, or teacher.train_epochs > 0 to train one)")
    ckpt = read_checkpoint(tc.checkpoint)
    if ckpt["spec"] is not None and tc.class_names is not None:
        raise ConfigError(f"teacher.class_names: {tc.checkpoint} names its own classes "
                          f"({', '.join(ckpt['spec'].class_names[:6])}...): drop "
                          "teacher.class_names (it is for a plain state_dict)")
    if ckpt["spec"] is None and tc.model is None:
        raise ConfigError(f"teacher.checkpoint {tc.checkpoint} is a plain state_dict without a "
                         "model spec: set teacher.model (arch, encoder, decoder_channels)")
    if ckpt["spec"] is None:  # a plain state_dict: the architecture comes from teacher.model
        m = tc.model
        given = tc.class_names
        classes = (m.classes or _head_classes(ckpt["state_dict"]) or (given and len(given))
                   or s_spec.classes)
        if given is not None and len(given) != classes:
            raise ConfigError(f"teacher.class_names has {len(given)} names but the teacher "
                              f"{tc.checkpoint} has {classes} classes (its head"
                              f"{', teacher.model.classes' if m.classes else ''})")
        names = given or (s_spec.class_names if classes == s_spec.classes else None)
        spec = make_spec(arch=m.arch, encoder=m.encoder, classes=classes,
                         class_names=names, ignore_index=s_spec.ignore_index,
                         decoder_channels=m.decoder_channels, factory=m.factory, kwargs=m.kwargs,
                         mean=m.mean, std=m.std,
                         input_size=tc.input_size or s_spec.input_size)
    model, spec = load_model(tc.checkpoint, spec=spec,
                             strict=not (tc.allow_missing_keys or tc.adapter),
                             return_spec=True, trusted=recipe_factories(cfg),
                             missing_hint=ADAPTER_HINT)
    _check_teacher_weights(model, tc)
    return model, spec


# what a refusal of missing teacher weights adds: the usual cause is a partial file
ADAPTER_HINT = (" (a file of part of the weights, e.g. LoRA: give the base model as "
                "teacher.checkpoint and this file as teacher.adapter; or "
                "teacher.allow_missing_keys=true to run the rest on initial values)")


# teacher.kind -> (cfg, student spec, levels, device) -> (eval-mode model, its spec)
TEACHER_LOADERS = {"checkpoint": _checkpoint_teacher, "hf": _hf_teacher}


def preflight_teacher(cfg: RunConfig, teacher: Teacher, val_loader, class_names: list[str],
                      device, show: bool = False) -> dict:
    """Score the teacher on the validation split (in the student's classes; a progress
    bar with ``show``); refuse one at chance unless ``teacher.allow_weak``."""
    score, conf = evaluate(teacher.predict, val_loader, class_names, cfg.ignore_index, device,
                           show=show, desc="teacher preflight")
    log.info(f"teacher val mIoU {score['miou'] * 100:.2f}")
    weak = weak_teacher(score, conf)
    if weak and not cfg.teacher.allow_weak:
        raise ConfigError(f"teacher {cfg.teacher.source} scores {weak}: refusing to "
                         "distil from it (teacher.allow_weak=true to override)")
    if weak:
        log.warning(f"teacher scores {weak} (teacher.allow_weak=true)")
    return score


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


def teacher_class_map(cfg: RunConfig, t_spec: ModelSpec, s_spec: ModelSpec
                      ) -> torch.Tensor | None:
    """The teacher's label map onto the student's classes (``kd.class_map``, or matched by
    name: :func:`compress.classmap.kd_class_map`); what it covers is logged
    (:func:`check_label_maps`)."""
    try:
        class_map = kd_class_map(cfg.kd.class_map, t_spec.class_names, s_spec.class_names)
    except ValueError as e:
        raise ConfigError(f"teacher.{cfg.teacher.kind} {cfg.teacher.source}: {e}") from None
    for line in check_label_maps(t_spec, s_spec, class_map):
        log.info(line)
    return class_map


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
    out = {}
    for lv, f in feats.items():
        stride = LEVEL_STRIDES.get(lv)
        if stride and tuple(f.shape[-2:]) != (h // stride, w // stride):
            raise ConfigError(f"feature level {lv!r} taps a tensor of size {tuple(f.shape[-2:])} "
                             f"for a {h}x{w} input: expected stride {stride}")
        out[lv] = f.shape[1]
    return out
