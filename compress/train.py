"""The one training loop. ``compress train`` and ``compress distill`` both call :func:`fit`;
distillation is training plus a frozen teacher plus extra named loss terms.

Read top to bottom: :func:`fit` sets up (run dir, data, model, teacher, optimizer, resume),
then loops :func:`train_one_epoch` and :func:`evaluate`, writing checkpoints atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from compress.classmap import kd_class_map
from compress.config import ConfigError, RunConfig, dump_config
from compress.data import build_split, build_train_set, dataset_classes
from compress.errors import InputError, UserError
from compress.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fault_point,
    remove_stale_temps,
)
from compress.losses import (
    Distiller,
    TaskLoss,
    map_classes,
    tap_levels,
    two_way,
)
from compress.metrics import scores, update_confusion
from compress.models import (
    create_model,
    forward_with_features,
    load_adapter,
    load_model,
    make_spec,
    read_checkpoint,
    save_checkpoint,
    unwrap,
)
from compress.spec import ModelSpec

log = logging.getLogger("compress")


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or inf; the message names epoch, step and the last good file."""


# ---------------------------------------------------------------- set-up helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but no CUDA GPU is available here")
    return torch.device(name)


def distributed_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def recipe_factories(cfg: RunConfig) -> set[str]:
    """Custom model factories the user named in the recipe (trusted: they wrote it)."""
    models = [cfg.model, cfg.teacher.model]
    return {m.factory for m in models if m is not None and m.factory}


VOID_NAMES = ("void", "unlabelled", "unlabeled", "ignore")


def check_task_settings(cfg: RunConfig, class_names: list[str]) -> None:
    """Refuse settings that would train and score something else than asked: an
    ``ignore_index`` that is a real class (it would score 0 IoU inside the mean) unless
    that class is named void, and class weights of another length than the classes."""
    i = cfg.ignore_index
    if 0 <= i < len(class_names) and class_names[i].strip().lower() not in VOID_NAMES:
        raise ConfigError(f"ignore_index {i} is the class {class_names[i]!r} (classes 0.."
                         f"{len(class_names) - 1}): pixels of it would never be learnt yet "
                         "count in the mIoU; use an index outside the classes (e.g. 255) or "
                         "name that class 'void'")
    w = cfg.loss.class_weights
    if w is not None and len(w) != len(class_names):
        raise ConfigError(f"loss.class_weights has {len(w)} entries but there are "
                         f"{len(class_names)} classes")


def student_spec(cfg: RunConfig, class_names: list[str], last_state: dict | None = None) -> ModelSpec:
    """The student's spec: from the recipe's model keys, or from ``model.init_from``'s
    checkpoint (a resume reads it from the run's own ``last.pt``)."""
    m = cfg.model
    if m.init_from:
        return _init_spec(m.init_from, cfg, class_names, last_state)
    if m.classes is not None and m.classes != len(class_names):
        raise ConfigError(f"model.classes={m.classes} but the data has {len(class_names)} "
                         f"classes ({', '.join(class_names[:8])})")
    return make_spec(
        arch=m.arch, encoder=m.encoder, classes=len(class_names), class_names=class_names,
        ignore_index=cfg.ignore_index, decoder_channels=m.decoder_channels, factory=m.factory,
        kwargs=m.kwargs, mean=m.mean, std=m.std, input_size=tuple(cfg.data.size),
    )


def _init_spec(path: str, cfg: RunConfig, class_names: list[str],
               last_state: dict | None) -> ModelSpec:
    if last_state is not None and last_state.get("spec"):
        return last_state["spec"]
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from not found: {path}")
    spec = read_checkpoint(path)["spec"]
    if spec is None:
        raise ValueError(f"model.init_from {path} is a plain state_dict: give a segcompress "
                         "checkpoint (its spec rebuilds the student)")
    names = [n.lower() for n in spec.class_names]
    generic = names == [f"class_{i}" for i in range(len(names))]  # names unknown: count only
    if (names != [n.lower() for n in class_names]
            and not (generic and len(names) == len(class_names))):
        raise ValueError(f"model.init_from {path}: its classes ({', '.join(spec.class_names[:6])}"
                         f"{' ...' if len(names) > 6 else ''}) are not the data's "
                         f"({', '.join(class_names[:6])}{' ...' if len(class_names) > 6 else ''})")
    return replace(spec, class_names=list(class_names), ignore_index=cfg.ignore_index,
                   input_size=[int(s) for s in cfg.data.size])


def _quantize_student(student: nn.Module, cfg: RunConfig, spec: ModelSpec,
                      last_state: dict | None, run_dir: Path) -> nn.Module:
    """``quant.qat``: NNCF's quantizers in the student (:mod:`compress.qat`)."""
    from compress.qat import calibration_batches, quantize_student, restore_qat

    if last_state is not None:
        if not last_state.get("quantization"):
            raise ValueError(f"cannot resume {run_dir} with quant.qat: its last.pt holds no "
                             "quantizers")
        return restore_qat(student, last_state["quantization"], run_dir)
    calib = build_split(cfg.data, cfg.data.train_split, spec.mean, spec.std,
                        cfg.ignore_index, False, cfg.seed)
    batches = calibration_batches(calib, cfg.quant.calib_samples, cfg.data.batch_size)
    log.info(f"quant.qat: nncf.quantize ({cfg.quant.preset}) calibrated on "
             f"{sum(len(b) for b in batches)} train images")
    return quantize_student(student, batches, preset=cfg.quant.preset)


def _qat_extra(student: nn.Module, cfg: RunConfig) -> dict:
    """What a QAT checkpoint adds: where its quantizers sit (``quantization``)."""
    if not cfg.quant.qat:
        return {}
    from compress.qat import qat_state

    return {"quantization": qat_state(unwrap(student), cfg.quant.preset)}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine or poly(0.9) decay to 0, or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** 0.9


def build_optimizer(model: nn.Module, extra: nn.Module | None, cfg: RunConfig):
    """AdamW; the encoder (usually pretrained) at ``lr * encoder_lr_mult``."""
    enc, rest = [], []
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            (enc if name.startswith("encoder.") else rest).append(p)
    if extra is not None:
        rest += [p for p in extra.parameters() if p.requires_grad]
    lr = cfg.train.lr
    groups = [{"params": rest, "lr": lr, "base_lr": lr}]
    if enc:
        groups.append({"params": enc, "lr": lr * cfg.train.encoder_lr_mult,
                       "base_lr": lr * cfg.train.encoder_lr_mult})
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.train.weight_decay)


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic per-epoch order (shuffle, or weighted draws for a mixture), sharded
    across DDP ranks. Depends only on (seed, epoch), so a resumed run sees the same data."""

    def __init__(self, n: int, seed: int, weights: torch.Tensor | None = None,
                 num_samples: int | None = None, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.weights = n, seed, weights
        self.num_samples = num_samples or n
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is None:
            idx = torch.randperm(self.n, generator=g)
            idx = idx.repeat(math.ceil(self.num_samples / self.n))[: self.num_samples]
        else:
            idx = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        per_rank = len(idx) // self.world
        return iter(idx[self.rank * per_rank : (self.rank + 1) * per_rank].tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world


def collate(batch: list[dict]) -> dict:
    """Stack tensors; keep names and geometry as lists."""
    out = {"image": torch.stack([b["image"] for b in batch]),
           "mask": torch.stack([b["mask"] for b in batch]),
           "index": torch.tensor([b["index"] for b in batch]),
           "name": [b["name"] for b in batch]}
    if "geometry" in batch[0]:
        out["geometry"] = [b["geometry"] for b in batch]
        out["orig_size"] = [b["orig_size"] for b in batch]
    return out


# ---------------------------------------------------------------- teacher


class Teacher:
    """A frozen teacher: eval mode, no grad, never in the optimizer, never wrapped in DDP.

    Calling it with a batch returns ``(logits, {level: feature})``. Images are converted
    from the student's normalisation to the teacher's, and resized when the teacher was
    trained at another input size. With ``class_map`` set, :meth:`predict` returns
    log-probabilities over the student's classes (what preflight scores and figures show).
    """

    class_map: torch.Tensor | None = None

    def __init__(self, model: nn.Module, spec: ModelSpec, student_spec: ModelSpec, levels: list[str],
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
    def __call__(self, batch: dict, images: torch.Tensor):
        x = (images * self.a + self.b).to(self.dtype)
        logits, feats = forward_with_features(self.model, x, self.levels)
        return logits.float(), {k: v.float() for k, v in feats.items()}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[N, Ct, H, W]``, or ``[N, Cs, H, W]`` log-probabilities in the
        student's classes when a class map is set."""
        logits = self(None, images)[0]
        if self.class_map is None:
            return logits
        return torch.log(map_classes(logits.softmax(1), self.class_map.to(logits.device))
                         .clamp_min(1e-8))


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
                         mean=m.mean, std=m.std, input_size=s_spec.input_size)
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


def model_label(spec: ModelSpec) -> str:
    """How a model is named to the user: its factory when it has one, else arch/encoder."""
    return f"factory {spec.factory}" if spec.factory else f"{spec.arch}/{spec.encoder}"


def _head_classes(state: dict) -> int | None:
    """The class count of a plain smp state_dict, from its segmentation head's bias."""
    for key in ("segmentation_head.0.bias", "module.segmentation_head.0.bias"):
        if key in state and state[key].ndim == 1:
            return int(state[key].shape[0])
    return None


def check_label_maps(t_spec: ModelSpec, s_spec: ModelSpec, class_map: torch.Tensor | None) -> list[str]:
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


def feature_channels(model: nn.Module, spec: ModelSpec, levels: list[str], device) -> dict[str, int]:
    """Channels of each tapped level, from one tiny forward pass (also checks strides)."""
    if not levels:
        return {}
    h, w = 64, 64
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


# ---------------------------------------------------------------- loop


@dataclass
class EpochResult:
    terms: dict[str, float]
    lr: float
    seconds: float
    steps: int = 0
    step_seconds: list[float] = field(default_factory=list)


def train_one_epoch(student, distiller, teacher, loader, optimizer, cfg: RunConfig, epoch: int,
                    step: int, total_steps: int, warmup_steps: int, device, show: bool = True,
                    nan_hook=None) -> tuple[EpochResult, int]:
    """One pass over the loader. Returns the mean of every loss term and the new step."""
    student.train()
    if cfg.quant.qat and cfg.quant.freeze_bn:  # the quantizer ranges were set with these stats
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    distiller.train()
    tc = cfg.train
    sums: dict[str, float] = {}
    n = 0
    t0 = time.perf_counter()
    levels = distiller.feature_levels
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp)
    use_amp = amp_dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    limit = tc.max_steps_per_epoch
    total = min(len(loader), limit * tc.accum_steps) if limit else len(loader)
    bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not show,
               leave=False, mininterval=1.0 if os.isatty(2) else 30.0, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    step_times = []
    for i, batch in enumerate(bar):
        if i >= total:
            break
        ts = time.perf_counter()
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        t_logits = t_feats = None
        if distiller.needs_teacher:
            t_logits, t_feats = teacher(batch, x)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
            s_logits, s_feats = forward_with_features(student, x, levels)
            terms = distiller(s_logits, y, t_logits, s_feats, t_feats)
        loss = terms["loss"]
        if nan_hook is not None:
            loss = nan_hook(loss, epoch, step)
        if fault_point("loss"):  # test hook (tests/faults): poison this loss
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
        scaler.scale(loss / tc.accum_steps).backward()
        if (i + 1) % tc.accum_steps == 0 or i + 1 == total:
            lr = optimizer.param_groups[0]["base_lr"] * lr_factor(step, total_steps, warmup_steps,
                                                                   tc.schedule)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, total_steps, warmup_steps, tc.schedule)
            if tc.clip_grad:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, tc.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        step_times.append(time.perf_counter() - ts)
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", lr=f"{lr:.2e}", refresh=False)
        fault_point("train_step")  # test hook (tests/faults): a kill mid-epoch
    bar.close()
    means = {k: v / max(n, 1) for k, v in sums.items()}
    return EpochResult(means, lr, time.perf_counter() - t0, n, step_times), step


@torch.no_grad()
def evaluate(predict, loader, class_names: list[str], ignore_index: int, device="cpu",
             flip: bool = False, show: bool = False) -> tuple[dict, torch.Tensor]:
    """Score ``predict(images) -> logits`` on a loader.

    Args:
        predict: a model or any callable from ``[N, 3, H, W]`` to ``[N, C, H, W]`` logits.
        flip: average softmax with the horizontally flipped input (test-time augmentation).

    Returns:
        ``(scores dict, confusion [C, C])``. A binary task (one class name: a single
        foreground logit) is scored over ``background`` + that class; binary tasks (one or
        two classes) also get ``fg_iou``, ``fg_dice`` and ``hd95`` (pixels, mean over the
        images where both masks have foreground; NaN when none has).
    """
    from compress.metrics import hd95

    if isinstance(predict, nn.Module):
        predict.eval()
    names = ["background", *class_names] if len(class_names) == 1 else list(class_names)
    c = len(names)
    conf = torch.zeros(c, c, dtype=torch.int64)
    distances: list[float] = []
    for batch in tqdm(loader, desc="eval", disable=not show, leave=False):
        fault_point("eval_batch")  # test hook (tests/faults): a kill during validation
        x = batch["image"].to(device)
        logits = predict(x)
        if flip:
            logits = (two_way(logits).softmax(1)
                      + two_way(predict(x.flip(-1)).flip(-1)).softmax(1))
        if logits.shape[-2:] != batch["mask"].shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=batch["mask"].shape[-2:],
                                                     mode="bilinear", align_corners=False)
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        if pred.max() >= c:  # a model with more classes than the data, without a class map
            raise ValueError(f"predictions reach class {int(pred.max())} but the data has {c} "
                             "classes")
        update_confusion(conf, pred.cpu(), batch["mask"], ignore_index)
        if c == 2:
            for p, t in zip(pred.cpu().numpy(), batch["mask"].numpy()):
                distances.append(hd95((p == 1) & (t != ignore_index), t == 1))
    result = scores(conf, names)
    if c == 2:
        fg = names[1]
        result["fg_iou"] = result["per_class_iou"][fg] or 0.0
        result["fg_dice"] = result["per_class_dice"][fg] or 0.0
        finite = [d for d in distances if math.isfinite(d)]
        result["hd95"] = sum(finite) / len(finite) if finite else float("nan")
    return result, conf


def weak_teacher(score: dict, conf: torch.Tensor) -> str | None:
    """Why a teacher's score (``metrics.scores`` or :func:`evaluate` of its predictions,
    with their confusion matrix) is near chance, or None. Used by the distill preflight
    and by ``pseudo-label``'s weak-member check.

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


# ---------------------------------------------------------------- fit


def make_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / cfg.name / stamp
    k = 1
    while run_dir.exists():
        run_dir = Path(cfg.output_dir) / cfg.name / f"{stamp}-{k}"
        k += 1
    return run_dir


class _HeldLog(logging.Handler):
    """Keeps records until a resume passed its checks (then they go to train.log)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _file_handler(run_dir: Path) -> logging.Handler:
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return fh


def _setup_logging(run_dir: Path, rank: int, buffered: bool = False) -> None:
    """train.log plus the console; ``buffered`` holds the file's records in memory until
    :func:`_commit_log` (a resume writes nothing before its checks pass)."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if rank == 0:
        log.addHandler(_HeldLog() if buffered else _file_handler(run_dir))
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    log.propagate = False


def _commit_log(run_dir: Path, rank: int) -> None:
    """Write the held records to train.log and log there from now on."""
    for h in list(log.handlers):
        if isinstance(h, _HeldLog):
            fh = _file_handler(run_dir)
            for r in h.records:
                fh.handle(r)
            log.removeHandler(h)
            log.addHandler(fh)


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def find_resume(resume: str | Path) -> tuple[Path, Path | None]:
    """(run dir, its last.pt) for ``--resume``; last.pt is None when the run was stopped
    before its first epoch ended (then it starts over, in the same run dir).

    Only a run dir (it holds ``config.yaml``) or the ``last.pt`` inside its
    ``checkpoints/`` is accepted: any other file would make a stranger folder the run dir.

    Raises:
        FileNotFoundError: ``resume`` does not exist or is not a run dir.
        ValueError: a file other than ``<run>/checkpoints/last.pt``.
    """
    p = Path(resume)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise FileNotFoundError(f"nothing to resume: {p} is not a run dir (no config.yaml)")
        last = p / "checkpoints" / "last.pt"
        return p, (last if last.is_file() else None)
    if not p.is_file():
        raise FileNotFoundError(f"nothing to resume: {p} not found (give a run dir or its "
                                "checkpoints/last.pt)")
    run = p.parent.parent
    if p.name != "last.pt" or p.parent.name != "checkpoints" or not (run / "config.yaml").is_file():
        raise ConfigError(f"--resume {p}: not a run's checkpoints/last.pt (give the run dir, "
                         "the folder holding config.yaml and checkpoints/)")
    return run, p


# a change to these keys does not change what is trained: allowed on resume, logged
RESUME_FREE_KEYS = ("name", "output_dir", "train.epochs", "train.device", "train.threads",
                    "train.val_every", "train.vis_every", "train.save_every",
                    "train.save_untrained", "train.test_split", "data.num_workers")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: ``{key: (old, new)}``."""
    a, b = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(run_dir: Path, cfg: RunConfig, done_epochs: int,
                 allow_changed: bool) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe of a resume with the run's own ``config.yaml``; nothing is written.

    Returns the changes (to be logged). Raises ValueError for a changed model / loss /
    data / optimiser recipe unless ``allow_changed`` (``--resume-changed``), and for
    ``train.epochs`` below the epochs already done.
    """
    from compress.config import load_config

    try:
        stored = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is not a valid recipe "
                         f"({e})") from None
    changes = config_changes(stored, cfg)
    recipe = {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS}
    if recipe and not allow_changed:
        shown = ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(recipe.items())[:5])
        more = f" (+{len(recipe) - 5} more)" if len(recipe) > 5 else ""
        raise ConfigError(f"cannot resume {run_dir}: the recipe differs from its config.yaml "
                         f"({shown}{more}); resume without -c to use the run's own recipe, or "
                         "pass --resume-changed to continue with the change (it is logged)")
    if cfg.train.epochs < done_epochs:
        raise ConfigError(f"cannot resume {run_dir}: it has run {done_epochs} epochs already, "
                         f"more than train.epochs={cfg.train.epochs}")
    return changes


def _resumed_config_text(run_dir: Path, cfg: RunConfig, note: str | None) -> str:
    """The resolved config, under the comment lines that record earlier resumes."""
    path = run_dir / "config.yaml"
    head = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            head.append(line)
    if note:
        head.append(f"# {note}")
    return "".join(f"{h}\n" for h in head) + dump_config(cfg)


def drawn_mixture(train_set, sampler) -> dict[str, int]:
    """Samples this epoch drew from each source of a mixture (``drawn_0`` = the labelled
    split, ``drawn_k`` = ``data.extra_train[k-1]``); empty for a single source. The draw
    depends only on (seed, epoch), so it can be counted without loading an image."""
    import bisect

    bounds = getattr(train_set, "cumulative_sizes", None)
    if not bounds or len(bounds) < 2:
        return {}
    counts = [0] * len(bounds)
    for i in sampler:
        counts[bisect.bisect_right(bounds, i)] += 1
    return {f"drawn_{k}": n for k, n in enumerate(counts)}


def _check_finite(model: nn.Module, epoch: int, step: int, good: Path) -> None:
    """Refuse to checkpoint weights or BatchNorm statistics that became NaN/inf."""
    bad = [k for k, v in unwrap(model).state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        where = f"last good checkpoint: {good}" if good.exists() else "no checkpoint yet"
        raise TrainingDiverged(f"weights became NaN/inf ({bad[0]}) at epoch {epoch + 1}, step "
                               f"{step}; {where}")


FAILED_NAME = "FAILED"
_FAILED_HEAD = "# segcompress: this run stopped with an error"


@dataclass
class RunProgress:
    """Where a run is, for its FAILED file: ``run_dir`` is set (on rank 0) once the run
    dir is ours to write (a new run dir, or a resume whose checks passed)."""

    run_dir: Path | None = None
    epoch: int | None = None
    epochs: int | None = None


def mark_failed(run_dir: Path, error: BaseException, progress: RunProgress) -> None:
    """Write ``<run>/FAILED``: the error class and message, the epoch, the UTC time.

    ``compress compare`` skips a run holding it (saying why); the run's next successful
    finish (``--resume``) removes it. A SIGKILL cannot write it. A failing write (disk
    full) is logged, never raised over the error that stopped the run.
    """
    from compress.errors import error_name, one_line

    at = (f"epoch {progress.epoch} of {progress.epochs}" if progress.epoch
          else "set-up, before the first epoch")
    text = (f"{_FAILED_HEAD}; `--resume {run_dir}` continues it and removes this file\n"
            f"error: {error_name(error)}: {one_line(error)}\n"
            f"at: {at}\n"
            f"time: {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}\n")
    try:
        atomic_write_text(run_dir / FAILED_NAME, text)
    except OSError as e:
        log.warning(f"could not mark {run_dir} as failed: {e}")


def failed_reason(run_dir: Path) -> str | None:
    """Why a run stopped, from its ``FAILED`` file (the ``error:`` line); None without one."""
    path = Path(run_dir) / FAILED_NAME
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        with open(path, "rb") as f:  # bounded: a FAILED file is a few lines
            text = f.read(4096).decode("utf-8", "replace")
    except OSError as e:
        return f"{FAILED_NAME} present but unreadable ({e.strerror})"
    for line in text.splitlines():
        if line.startswith("error: "):
            return line.removeprefix("error: ")[:500]
    return f"{FAILED_NAME} present (no reason given)"


def clear_failed(run_dir: Path) -> None:
    """Remove the ``FAILED`` file a previous attempt wrote, now that the run finished;
    a file of that name we did not write is left alone."""
    path = run_dir / FAILED_NAME
    if path.is_symlink() or not path.is_file():
        return
    with open(path, "rb") as f:
        ours = f.read(len(_FAILED_HEAD)).decode("utf-8", "replace") == _FAILED_HEAD
    if ours:
        path.unlink()
        log.info(f"{path} removed: the run has finished")


def fit(cfg: RunConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None,
        show_progress: bool = True, nan_hook=None, resume_changed: bool = False) -> Path:
    """Train (or distil, when any kd weight is set) and return the run dir.

    Args:
        cfg: the resolved recipe.
        resume: a run dir or ``last.pt``; continues exactly (weights, optimizer, schedule,
            epoch, RNG, metrics history) in the same run dir.
        run_dir: where to write; default ``output_dir/name/timestamp``.
        resume_changed: continue a resumed run whose model / loss / data / optimiser recipe
            differs from its ``config.yaml`` (the change is logged and recorded).
        nan_hook: test hook ``f(loss, epoch, step) -> loss``.

    Raises:
        TrainingDiverged: a NaN/inf loss (the last good checkpoint is kept).

    Any error (or Ctrl-C) once the run dir is ours writes ``<run>/FAILED`` with the
    reason (:func:`mark_failed`); finishing removes it (:func:`clear_failed`).
    """
    progress = RunProgress()
    try:
        done = _fit(cfg, progress, resume=resume, run_dir=run_dir, show_progress=show_progress,
                    nan_hook=nan_hook, resume_changed=resume_changed)
    except (Exception, KeyboardInterrupt) as e:
        if progress.run_dir is not None:
            mark_failed(progress.run_dir, e, progress)
        raise
    if progress.run_dir is not None:
        clear_failed(done)
    return done


def _fit(cfg: RunConfig, progress: RunProgress, *, resume: str | Path | None,
         run_dir: str | Path | None, show_progress: bool, nan_hook,
         resume_changed: bool) -> Path:
    """The body of :func:`fit`; records in ``progress`` where it is."""
    rank, world = distributed_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = resolve_device(cfg.train.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # denormal floats (tiny gradients late in training) slow CPU kernels by 10x or more
    torch.set_flush_denormal(True)

    last_state, changes = None, {}
    if resume is not None:  # every check first: nothing is written until the state loaded
        run_dir, last_path = find_resume(resume)
        if last_path is not None:
            last_state = read_checkpoint(last_path)
            if "optimizer" not in last_state or "history" not in last_state:
                raise ConfigError(f"nothing to resume: {last_path} holds weights only (no "
                                 "optimizer state); give a run's checkpoints/last.pt")
        changes = check_resume(run_dir, cfg, last_state["epoch"] if last_state else 0,
                               resume_changed)
    run_dir = Path(run_dir) if run_dir else make_run_dir(cfg)
    if world > 1:  # every rank must agree on rank 0's run dir
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    if resume is None:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir, rank, buffered=resume is not None)
    if rank == 0 and resume is None:
        progress.run_dir = run_dir  # a new run dir: an error from here on marks it FAILED
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))

    torch.manual_seed(cfg.seed)
    class_names = cfg.class_names or dataset_classes(cfg.data, cfg.ignore_index)
    spec = student_spec(cfg, class_names, last_state)
    train_set = build_train_set(cfg.data, spec.mean, spec.std, cfg.ignore_index, cfg.seed)
    val_set = build_split(cfg.data, cfg.data.val_split, spec.mean, spec.std,
                          cfg.ignore_index, False, cfg.seed)
    if len(train_set.class_names) != len(class_names):
        raise ConfigError(f"class_names has {len(class_names)} entries but the data has "
                         f"{len(train_set.class_names)} classes")
    check_task_settings(cfg, class_names)

    if cfg.model.init_from and last_state is None:  # architecture and weights of a checkpoint
        student = load_model(cfg.model.init_from, spec=spec, trusted=recipe_factories(cfg))
        log.info(f"student initialised from {cfg.model.init_from}")
    else:
        student = create_model(spec, cfg.model.encoder_weights if last_state is None else None,
                               trusted=recipe_factories(cfg))
    student.to(device)
    if cfg.quant.qat:  # fake INT8 quantizers: fresh from calibration, or as last.pt had them
        student = _quantize_student(student, cfg, spec, last_state, run_dir)

    kd = cfg.kd
    needs_teacher = bool(kd.response.weight or kd.feature.weight or kd.cwd.weight)
    feat_levels = kd.feature.levels if kd.feature.weight else []
    cwd_levels = kd.cwd.levels if kd.cwd.weight else []
    taps = tap_levels(feat_levels, cwd_levels)
    teacher, class_map, t_channels, teacher_score = None, None, {}, None
    if needs_teacher:
        teacher, t_spec = load_teacher(cfg, spec, taps, device)
        try:
            class_map = kd_class_map(kd.class_map, t_spec.class_names, spec.class_names)
        except ValueError as e:
            raise ConfigError(f"teacher.checkpoint {cfg.teacher.checkpoint}: {e}") from None
        for line in check_label_maps(t_spec, spec, class_map):
            log.info(line)
        teacher.class_map = class_map  # preflight and figures score it in student classes
        t_channels = feature_channels(teacher.model, t_spec, taps, device)
    s_channels = feature_channels(student, spec, taps, device)
    distiller = Distiller(
        task=TaskLoss(cfg.loss.ce, cfg.loss.dice, cfg.ignore_index, cfg.loss.class_weights),
        w_task=cfg.w_task, w_kd=kd.response.weight, temperature=kd.response.temperature,
        w_feat=kd.feature.weight, feat_levels=feat_levels, feat_kind=kd.feature.kind,
        w_cwd=kd.cwd.weight, cwd_temperature=kd.cwd.temperature, cwd_levels=cwd_levels,
        student_channels=s_channels, teacher_channels=t_channels, class_map=class_map,
        ignore_index=cfg.ignore_index,
    ).to(device)

    model = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, distiller.adapters, cfg)

    weights = train_set.sample_weights() if hasattr(train_set, "sample_weights") else None
    sampler = EpochSampler(len(train_set), cfg.seed, weights, cfg.data.epoch_samples, rank, world)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
        num_workers=cfg.data.num_workers, collate_fn=collate, persistent_workers=False)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.data.batch_size,
                                             num_workers=cfg.data.num_workers, collate_fn=collate)
    if len(loader) == 0:
        raise ConfigError(f"training split has {len(train_set)} samples, fewer than one batch "
                         f"of data.batch_size={cfg.data.batch_size}")
    steps_per_epoch = math.ceil(min(len(loader), (cfg.train.max_steps_per_epoch or 10**9)
                                    * cfg.train.accum_steps) / cfg.train.accum_steps)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = int(cfg.train.warmup_epochs * steps_per_epoch)

    start_epoch, step, best, history = 0, 0, -1.0, []
    if last_state is not None:
        student.load_state_dict(last_state["state_dict"])
        recipe_hp = [(g["base_lr"], g["weight_decay"]) for g in optimizer.param_groups]
        optimizer.load_state_dict(last_state["optimizer"])
        for g, (base_lr, wd) in zip(optimizer.param_groups, recipe_hp):  # today's recipe rules
            g["base_lr"], g["weight_decay"] = base_lr, wd
        distiller.load_state_dict(last_state.get("distiller_state", {}), strict=False)
        start_epoch, step = last_state["epoch"], last_state["step"]
        best, history = last_state["best_miou"], list(last_state["history"])
        torch.set_rng_state(last_state["rng"]["torch"])
        log.info(f"resumed from {run_dir} at epoch {start_epoch}")
        old_total = (last_state.get("scheduler") or {}).get("total_steps", total_steps)
        if old_total != total_steps:
            lr0 = cfg.train.lr
            log.info(f"lr schedule recomputed for {cfg.train.epochs} epochs ({old_total} -> "
                     f"{total_steps} steps): lr at step {step} goes from "
                     f"{lr0 * lr_factor(step, old_total, warmup_steps, cfg.train.schedule):.3g} "
                     f"to {lr0 * lr_factor(step, total_steps, warmup_steps, cfg.train.schedule):.3g}")
    elif resume is not None:
        log.info(f"{run_dir} has no checkpoints/last.pt yet (stopped in its first epoch): "
                 "starting over in the same run dir")

    for k, (old, new) in changes.items():
        log.info(f"resume: {k} changed from {old!r} to {new!r}"
                 + ("" if k in RESUME_FREE_KEYS else " (--resume-changed)"))

    if teacher is not None and rank == 0:
        teacher_score, t_conf = evaluate(teacher.predict, val_loader, class_names,
                                         cfg.ignore_index, device)
        log.info(f"teacher val mIoU {teacher_score['miou'] * 100:.2f}")
        weak = weak_teacher(teacher_score, t_conf)
        if weak and not cfg.teacher.allow_weak:
            raise ConfigError(f"teacher {cfg.teacher.checkpoint} scores {weak}: refusing to "
                             "distil from it (teacher.allow_weak=true to override)")
        if weak:
            log.warning(f"teacher scores {weak} (teacher.allow_weak=true)")
    if resume is not None and rank == 0:  # every check passed: now the run dir may change
        progress.run_dir = run_dir
        for folder in (run_dir, run_dir / "checkpoints"):  # temp files of interrupted writes
            remove_stale_temps(folder)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        note = None
        if changes:
            note = (f"resumed {datetime.now():%Y-%m-%d %H:%M:%S} at epoch {start_epoch}: "
                    + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()))
        atomic_write_text(run_dir / "config.yaml", _resumed_config_text(run_dir, cfg, note))
        if last_state is not None:  # a kill between last.pt and metrics.csv left it a row behind
            _write_metrics_csv(run_dir / "metrics.csv", history)
    _commit_log(run_dir, rank)
    if teacher is not None and kd.cache:  # writes into the run dir: after the checks
        from compress.cache import CachedTeacher

        teacher = CachedTeacher.build(teacher, train_set, run_dir / "cache", kd.cache_scale,
                                      batch_size=cfg.data.batch_size, show=show_progress)

    if rank == 0 and cfg.train.save_untrained and last_state is None:
        save_checkpoint(run_dir / "checkpoints" / "untrained.pt", student, spec, metrics=None,
                        config=cfg.model_dump(mode="json"), epoch=0, **_qat_extra(student, cfg))
    writer = _tensorboard(run_dir) if rank == 0 else None
    log.info(f"run dir {run_dir}: {cfg.name}, {len(train_set)} train / {len(val_set)} val "
             f"images, {model_label(spec)}, {len(class_names)} classes, "
             f"device {device}, world {world}")
    ckpt_dir = run_dir / "checkpoints"
    resolved = cfg.model_dump(mode="json")
    progress.epochs = cfg.train.epochs
    for epoch in range(start_epoch, cfg.train.epochs):
        progress.epoch = epoch + 1
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        try:
            res, step = train_one_epoch(model, distiller, teacher, loader, optimizer, cfg, epoch,
                                        step, total_steps, warmup_steps, device,
                                        show_progress and rank == 0, nan_hook)
        except TrainingDiverged as e:
            good = ckpt_dir / "last.pt"
            where = f"last good checkpoint: {good}" if good.exists() else "no checkpoint yet"
            raise TrainingDiverged(f"{e}; {where}") from None
        _check_finite(student, epoch, step, ckpt_dir / "last.pt")
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": round(v, 6)
                                                      for k, v in res.terms.items()},
                               **drawn_mixture(train_set, sampler),
                               "lr": res.lr, "epoch_seconds": round(res.seconds, 2),
                               "step_ms_median": round(sorted(res.step_seconds)[len(res.step_seconds) // 2] * 1000, 2)}
        metrics = None
        if rank == 0 and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs):
            metrics, _ = evaluate(student, val_loader, class_names, cfg.ignore_index, device)
            row.update(val_miou=round(metrics["miou"], 6), val_pixel_acc=round(metrics["pixel_acc"], 6),
                       val_dice=round(metrics["dice"], 6))
            for k in ("fg_iou", "fg_dice", "hd95"):  # binary tasks
                if k in metrics:
                    row[f"val_{k}"] = round(metrics[k], 4)
            vis = cfg.train.vis_every
            if vis and ((epoch + 1) % vis == 0 or epoch + 1 == cfg.train.epochs):
                from compress.viz import save_epoch_visual

                save_epoch_visual(run_dir / "visualizations" / f"epoch_{epoch + 1:03d}.png",
                                  student, teacher, val_set, spec, device)
        history.append(row)
        if rank == 0:
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        writer.add_scalar(k.replace("_", "/", 1), v, epoch + 1)
                writer.flush()
            common = {"config": resolved, "epoch": epoch + 1, "teacher_val": teacher_score,
                      **_qat_extra(student, cfg)}
            if metrics is not None and metrics["miou"] > best:
                best = metrics["miou"]
                save_checkpoint(ckpt_dir / "best.pt", student, spec, metrics=metrics, **common)
            if cfg.train.save_every and (epoch + 1) % cfg.train.save_every == 0:
                save_checkpoint(ckpt_dir / f"epoch_{epoch + 1:03d}.pt", student, spec,
                                metrics=metrics, **common)
            save_checkpoint(
                ckpt_dir / "last.pt", student, spec, metrics=metrics, **common, step=step,
                best_miou=best, history=history, optimizer=optimizer.state_dict(),
                scheduler={"step": step, "total_steps": total_steps, "warmup_steps": warmup_steps},
                distiller_state={k: v.cpu() for k, v in distiller.state_dict().items()},
                rng={"torch": torch.get_rng_state()},
            )
            _write_metrics_csv(run_dir / "metrics.csv", history)
            msg = " ".join(f"{k}={v:.4f}" for k, v in res.terms.items())
            val = f" val_mIoU={metrics['miou'] * 100:.2f}" if metrics else ""
            drawn = " ".join(f"{k}={v}" for k, v in row.items() if k.startswith("drawn_"))
            log.info(f"epoch {epoch + 1}/{cfg.train.epochs} {msg} lr={res.lr:.2e}{val} "
                     f"({res.seconds:.1f}s){' ' + drawn if drawn else ''}")
        if world > 1:
            dist.barrier()
    if writer is not None:
        writer.close()
    test = None
    if rank == 0:
        test = _test_split_pass(cfg, run_dir, student, teacher, spec, class_names, device)
        _write_summary(run_dir, history, spec, best, test)
    if world > 1:
        dist.barrier()
    return run_dir


def _test_split_pass(cfg: RunConfig, run_dir: Path, student, teacher, spec: ModelSpec,
                     class_names: list[str], device) -> dict | None:
    """Score best.pt on the data's test split (when it has one): ``test/eval.json`` and
    ``visualizations/test.png``. Synthetic data has no held-out test split."""
    from compress.data import DataError

    split = cfg.train.test_split
    best = run_dir / "checkpoints" / "best.pt"
    if not split or cfg.data.kind == "synthetic" or not best.is_file():
        return None
    try:
        test_set = build_split(cfg.data, split, spec.mean, spec.std, cfg.ignore_index,
                               False, cfg.seed)
    except DataError:
        return None  # no such split: nothing to report
    student.load_state_dict(read_checkpoint(best)["state_dict"])
    loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.data.batch_size,
                                         num_workers=cfg.data.num_workers, collate_fn=collate)
    metrics, _ = evaluate(student, loader, class_names, cfg.ignore_index, device)
    metrics.update(checkpoint=str(best), split=split, images=len(test_set))
    atomic_write_json(run_dir / "test" / "eval.json", metrics)
    from compress.viz import save_epoch_visual

    save_epoch_visual(run_dir / "visualizations" / "test.png", student, teacher, test_set, spec,
                      device)
    log.info(f"test split {split!r} ({len(test_set)} images): mIoU {metrics['miou'] * 100:.2f} "
             f"with best.pt")
    return metrics


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install should not stop training
        log.warning("tensorboard not importable: no event files written")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _write_summary(run_dir: Path, history: list[dict], spec: ModelSpec, best: float,
                   test: dict | None = None) -> None:
    total = sum(r.get("epoch_seconds", 0) for r in history)
    atomic_write_json(run_dir / "summary.json", {
        "best_val_miou": best, "epochs": len(history), "train_seconds": round(total, 1),
        "spec": spec.to_dict(), "final": history[-1] if history else None,
        "test_miou": test["miou"] if test else None,
    })


def prepare_teacher(cfg: RunConfig, show_progress: bool = True) -> None:
    """Train the configured teacher on the fly when ``teacher.checkpoint`` does not exist
    and ``teacher.train_epochs > 0`` (the quickstart does this), then copy its best.pt."""
    tc = cfg.teacher
    if not tc.checkpoint or Path(tc.checkpoint).exists() or not tc.train_epochs:
        return
    if tc.model is None:
        raise ConfigError("teacher.train_epochs needs teacher.model (the teacher's architecture)")
    t_cfg = cfg.model_copy(deep=True)
    t_cfg.name = f"{cfg.name}-teacher"
    t_cfg.model = tc.model
    t_cfg.w_task = 1.0
    t_cfg.kd = type(cfg.kd)()
    t_cfg.train.epochs = tc.train_epochs
    log.info(f"teacher {tc.checkpoint} not found: training it for {tc.train_epochs} epochs")
    t_run = fit(t_cfg, show_progress=show_progress)
    src = t_run / "checkpoints" / "best.pt"
    atomic_write(tc.checkpoint, lambda p: p.write_bytes(src.read_bytes()))
