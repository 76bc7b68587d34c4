"""The one training loop. ``compress train`` and ``compress distill`` both call :func:`fit`;
distillation is training plus a frozen teacher plus extra named loss terms, all in one
:class:`compress.distill.DistillationTask` that the loop only calls.

Read top to bottom: :func:`fit` runs the named set-up steps (:func:`setup_context`,
:func:`setup_data`, :func:`setup_student`, :func:`setup_teacher`, :func:`setup_task`,
:func:`build_optimizer`, :func:`setup_schedule`, :func:`restore_run` on a resume), then
loops :func:`train_one_epoch`, :func:`validate` and :func:`save_epoch` (checkpoints written
atomically), and returns a :class:`FitResult`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn
from tqdm import tqdm

from compress.classmap import kd_class_map
from compress.config import ConfigError, RunConfig, dump_config, load_config, log_keys
from compress.data import (
    build_depth_val,
    build_split,
    build_train_set,
    dataset_classes,
    ignore_collision,
)
from compress.distill import (
    DistillationTask,
    Teacher,
    check_label_maps,
    feature_channels,
    load_teacher,
    recipe_factories,
    recipe_references,
)
from compress.errors import InputError, UserError
from compress.evidence import ImageCounter, ImageCounts
from compress.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fault_point,
    remove_stale_temps,
)
from compress.losses import Distiller, TaskLoss, two_way
from compress.metrics import ImageSink, predicted_ids, scores, update_confusion
from compress.models import (
    create_model,
    load_model,
    make_spec,
    read_checkpoint,
    require_trusted,
    save_checkpoint,
    unwrap,
)
from compress.multitask import seg_logits
from compress.spec import ModelSpec
from compress.trackers import check_trackers, start_trackers

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


VOID_NAMES = ("void", "unlabelled", "unlabeled", "ignore")


def check_class_names(class_names: list[str], ignore_index: int,
                      data_names: list[str] | None = None, what: str = "class_names") -> None:
    """Refuse a label set that would score something else than asked (train, distill and
    eval make the same checks): the data's class names (``classes.txt``...) in another
    order, and an ``ignore_index`` that is a real class (it would score 0 IoU inside the
    mean) unless that class is named void.

    Raises:
        ConfigError: one line naming ``what``, the names and the index.
    """
    if data_names is not None and len(data_names) == len(class_names):
        mine, theirs = [n.strip().lower() for n in class_names], [n.strip().lower()
                                                                   for n in data_names]
        if mine != theirs and sorted(mine) == sorted(theirs):
            i = next(k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b)
            raise ConfigError(f"{what} {list(class_names)[:8]} are the data's class names "
                             f"{list(data_names)[:8]} in another order: label {i} is "
                             f"{data_names[i]!r} in the data but {class_names[i]!r} here, so "
                             "every score would be of the wrong class")
    i = ignore_index
    if 0 <= i < len(class_names) and class_names[i].strip().lower() not in VOID_NAMES:
        raise ConfigError(f"ignore_index {i} is the class {class_names[i]!r} (classes 0.."
                         f"{len(class_names) - 1}): pixels of it would never be learnt yet "
                         "count in the mIoU; use an index outside the classes (e.g. 255) or "
                         "name that class 'void'")


def check_task_settings(cfg: RunConfig, class_names: list[str],
                        data_names: list[str] | None = None) -> None:
    """Refuse settings that would train and score something else than asked: the label
    set (:func:`check_class_names`), and class weights of another length than the
    classes."""
    check_class_names(class_names, cfg.ignore_index, data_names)
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
    if "depth" in batch[0]:  # a multi-task run: [N, H, W] metres, 0 = no value
        out["depth"] = torch.stack([b["depth"] for b in batch])
    if "geometry" in batch[0]:
        out["geometry"] = [b["geometry"] for b in batch]
        out["orig_size"] = [b["orig_size"] for b in batch]
    return out


# ---------------------------------------------------------------- schedule


def create_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                        warmup_steps: int) -> Scheduler:
    """The recipe's LR schedule as a timm scheduler stepped per optimizer step
    (``t_in_epochs=False``; drive it with :func:`set_step_lr`).

    Linear warm-up over ``warmup_steps`` (from ``lr / warmup_steps`` on the first step to
    ``lr``), then ``cosine`` or ``poly`` (power 0.9) decay to 0 at ``total_steps``, or
    ``constant``. Every param group follows it at its own base LR (the encoder's is
    ``lr * encoder_lr_mult``).
    """
    decay = max(1, total_steps - warmup_steps)
    common = {"warmup_t": warmup_steps, "warmup_lr_init": 0.0, "t_in_epochs": False}
    if schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=decay, lr_min=0.0, warmup_prefix=True,
                                 **common)
    if schedule == "poly":
        return PolyLRScheduler(optimizer, t_initial=decay, power=0.9, lr_min=0.0,
                               warmup_prefix=True, **common)
    return StepLRScheduler(optimizer, decay_t=decay, decay_rate=1.0, **common)  # constant


def set_step_lr(scheduler: Scheduler, step: int) -> None:
    """Set every group's LR for optimizer step ``step`` (counted from 0).

    timm's warm-up reaches the base LR at ``t == warmup_t``; ours reaches it on the last
    warm-up step (step ``warmup - 1``: the first step already trains at ``lr / warmup``),
    so a warm-up step is passed as ``step + 1``. The decay then starts at the base LR on
    step ``warmup`` and ends at 0 on ``total_steps``.
    """
    scheduler.step_update(step + 1 if step < scheduler.warmup_t else step)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The schedule's LR at ``step`` as a fraction of the base LR (for logs and tests)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = create_lr_scheduler(opt, schedule, total, warmup)
    set_step_lr(scheduler, step)
    return opt.param_groups[0]["lr"]


def restore_scheduler(scheduler: Scheduler, saved: dict | None) -> bool:
    """Load the schedule state a resumed run's ``last.pt`` saved; True when loaded.

    A timm scheduler's LR is a function of the step (restored with the run), so its state
    is its settings. Saved settings that differ from what today's recipe builds
    (``train.epochs`` changed, or the LR / schedule under ``--resume-changed``) are not
    loaded: today's recipe rules, as for the optimizer's hyperparameters, and the caller
    logs the change. A ``last.pt`` written before the schedules came from timm holds no
    ``state``: the schedule is rebuilt from the recipe, which gives the same LRs.
    """
    state = (saved or {}).get("state")
    if state is None or state != scheduler.state_dict():
        return False
    scheduler.load_state_dict(state)
    return True


def model_label(spec: ModelSpec) -> str:
    """How a model is named to the user: its factory when it has one, else arch/encoder."""
    return f"factory {spec.factory}" if spec.factory else f"{spec.arch}/{spec.encoder}"



# ---------------------------------------------------------------- loop


@dataclass
class EpochResult:
    terms: dict[str, float]
    lr: float
    seconds: float
    steps: int = 0
    step_seconds: list[float] = field(default_factory=list)


StepHook = Callable[[torch.Tensor, int, int], torch.Tensor]
_step_hooks: list[StepHook] = []  # empty in normal use: the loop checks it once per step


@contextmanager
def step_hook(fn: StepHook) -> Iterator[None]:
    """Test hook: inside the ``with``, every training step's loss goes through
    ``fn(loss, epoch, step) -> loss`` before the finiteness check (epoch counted from 0,
    ``step`` the optimizer steps done). Tests stop a run there (raise) or poison it."""
    _step_hooks.append(fn)
    try:
        yield
    finally:
        _step_hooks.remove(fn)


def train_one_epoch(task: DistillationTask, loader, optimizer, scheduler: Scheduler,
                    cfg: RunConfig, epoch: int, step: int, device,
                    show: bool = True) -> tuple[EpochResult, int]:
    """One pass over the loader: ``task`` gives the named terms of each step, their
    ``loss`` is backpropagated. Returns the mean of every term and the new step count."""
    task.train()
    if cfg.quant.qat and cfg.quant.freeze_bn:  # the quantizer ranges were set with these stats
        for m in task.student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    tc = cfg.train
    sums: dict[str, float] = {}
    n = 0
    t0 = time.perf_counter()
    scaler = torch.amp.GradScaler("cuda", enabled=task.amp_dtype == torch.float16)
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
        terms = task(x, y, batch)
        loss = terms["loss"]
        if _step_hooks:
            for hook in _step_hooks:
                loss = hook(loss, epoch, step)
        if fault_point("loss"):  # test hook (tests/faults): poison this loss
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
        scaler.scale(loss / tc.accum_steps).backward()
        if (i + 1) % tc.accum_steps == 0 or i + 1 == total:
            set_step_lr(scheduler, step)
            lr = optimizer.param_groups[0]["lr"]
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
             flip: bool = False, show: bool = False, depth=None,
             per_image: ImageSink | None = None) -> tuple[dict, torch.Tensor]:
    """Score ``predict(images) -> logits`` on a loader.

    Args:
        predict: a model or any callable from ``[N, 3, H, W]`` to ``[N, C, H, W]`` logits.
        flip: average softmax with the horizontally flipped input (test-time augmentation).
        depth: the depth task (:func:`depth_task`) of a multi-task model whose batches
            carry ``"depth"``: the same forward pass also scores it, into the result's
            ``"depth"`` (one pass over the split for both tasks; depth is not flipped).
        per_image: also hand each batch's class ids and image names to this sink
            (:class:`compress.evidence.ImageCounter`: per-image counts, same pixels).

    Returns:
        ``(scores dict, confusion [C, C])``. A binary task (one class name: a single
        foreground logit) is scored over ``background`` + that class; binary tasks (one or
        two classes) also get ``fg_iou``, ``fg_dice`` and ``hd95`` (pixels, mean over the
        images where both masks have foreground; NaN when none has).
    """
    from compress.depth import DepthMeter
    from compress.metrics import hd95

    if isinstance(predict, nn.Module):
        predict.eval()
    meter = DepthMeter(max_depth=depth.max_depth) if depth is not None else None
    names = ["background", *class_names] if len(class_names) == 1 else list(class_names)
    c = len(names)
    conf = torch.zeros(c, c, dtype=torch.int64)
    distances: list[float] = []
    for batch in tqdm(loader, desc="eval", disable=not show, leave=False):
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
    """Depth metrics (:class:`compress.depth.DepthMeter`: ``rmse``, ``abs_rel``,
    ``delta1..3``, ``pixels``) of ``predict(images)[task]`` against the batches'
    ``"depth"`` maps, on valid pixels (target > 0) inside ``[min_depth, max_depth]``."""
    from compress.depth import DepthMeter

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


def depth_task(spec: ModelSpec):
    """The spec's depth task (:class:`compress.tasks.TaskSpec`), or None (single-task)."""
    from compress.tasks import parse_tasks

    tasks = parse_tasks(spec.tasks)
    return tasks[0] if tasks else None


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


def check_run_recipe(run_dir: Path, cfg: RunConfig, overrides: list[str] | None = None) -> None:
    """A resume whose recipe is the run dir's own ``config.yaml``: a run dir handed over is
    data, so a factory, external encoder or kwarg its recipe names
    (:func:`compress.distill.recipe_references`) is refused unless trusted by name (or
    given now in ``overrides``); nothing is imported before this passes.

    Raises:
        ModelError: one line naming config.yaml, the key and the name.
    """
    from compress.config import parse_overrides

    given = [k for k, _ in parse_overrides(overrides or [])]  # the keys set now, by the user
    for key, name in recipe_references(cfg):
        if not any(key == k or key.startswith(k + ".") for k in given):
            require_trusted(key, name, source=Path(run_dir) / "config.yaml")


# a change to these keys does not change what is trained: allowed on resume, logged
RESUME_FREE_KEYS = ("name", "output_dir", "train.epochs", "train.device", "train.threads",
                    "train.val_every", "train.vis_every", "train.save_every",
                    "train.save_untrained", "train.test_split", "data.num_workers",
                    *log_keys())


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


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
    """``key: old -> new`` for the first five changes (and how many more)."""
    shown = ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(changes.items())[:5])
    return shown + (f" (+{len(changes) - 5} more)" if len(changes) > 5 else "")


def check_resume(run_dir: Path, cfg: RunConfig, done_epochs: int,
                 allow_changed: bool, saved: dict | None = None) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe of a resume with the run's own ``config.yaml``, and that file
    with the config saved in ``last.pt`` (``saved``: what was really trained; an edited
    config.yaml would otherwise resume silently); nothing is written.

    Returns the changes (to be logged). Raises ConfigError for a changed model / loss /
    data / optimiser recipe unless ``allow_changed`` (``--resume-changed``), and for
    ``train.epochs`` below the epochs already done.
    """
    from compress.config import load_config

    try:
        stored = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is not a valid recipe "
                         f"({e})") from None
    edited = {}
    if isinstance(saved, dict):  # keys both know: a file from an older version lacks some
        a, b = _flat(saved), _flat(stored.model_dump(mode="json"))
        edited = {k: (a[k], b[k]) for k in sorted(set(a) & set(b))
                  if a[k] != b[k] and k not in RESUME_FREE_KEYS}
    if edited and not allow_changed:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml differs from the config "
                         f"saved in checkpoints/last.pt ({_shown(edited)}): edited after the "
                         "run started? pass --resume-changed to continue with the change (it "
                         "is logged)")
    changes = config_changes(stored, cfg)
    recipe = {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS}
    if recipe and not allow_changed:
        raise ConfigError(f"cannot resume {run_dir}: the recipe differs from its config.yaml "
                         f"({_shown(recipe)}); resume without -c to use the run's own recipe, or "
                         "pass --resume-changed to continue with the change (it is logged)")
    if cfg.train.epochs < done_epochs:
        raise ConfigError(f"cannot resume {run_dir}: it has run {done_epochs} epochs already, "
                         f"more than train.epochs={cfg.train.epochs}")
    return {**edited, **changes}


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


@dataclass
class FitResult:
    """What :func:`fit` returns: where the run is and how it ended.

    Attributes:
        run_dir: the run dir (``config.yaml``, ``metrics.csv``, ``checkpoints/``...).
        best_checkpoint: ``checkpoints/best.pt``, the best validated epoch (None when
            there is none).
        best_miou: its validation mIoU (-1 when no epoch was validated).
        last_metrics: the last epoch's ``metrics.csv`` row (``train_<term>``, ``lr``,
            ``val_miou``...).
        epochs: epochs done; train_seconds: their total time.
        test_metrics: ``test/eval.json`` (best.pt on the test split), when there is one.
    """

    run_dir: Path
    best_checkpoint: Path | None
    best_miou: float
    last_metrics: dict[str, Any] | None
    epochs: int
    train_seconds: float
    test_metrics: dict | None = None


def fit(cfg: RunConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None,
        show_progress: bool = True, resume_changed: bool = False) -> FitResult:
    """Train (or distil, when ``cfg.kd.enabled``) and return where and how it ended.

    Args:
        cfg: the resolved recipe.
        resume: a run dir or ``last.pt``; continues exactly (weights, optimizer, schedule,
            epoch, RNG, metrics history) in the same run dir.
        run_dir: where to write; default ``output_dir/name/timestamp``.
        resume_changed: continue a resumed run whose model / loss / data / optimiser recipe
            differs from its ``config.yaml`` (the change is logged and recorded).

    Raises:
        TrainingDiverged: a NaN/inf loss (the last good checkpoint is kept).

    Any error (or Ctrl-C) once the run dir is ours writes ``<run>/FAILED`` with the
    reason (:func:`mark_failed`); finishing removes it (:func:`clear_failed`).
    """
    progress = RunProgress()
    try:
        result = _fit(cfg, progress, resume=resume, run_dir=run_dir,
                      show_progress=show_progress, resume_changed=resume_changed)
    except (Exception, KeyboardInterrupt) as e:
        if progress.run_dir is not None:
            mark_failed(progress.run_dir, e, progress)
        raise
    if progress.run_dir is not None:
        clear_failed(result.run_dir)
    return result


@dataclass
class RunState:
    """What changes from epoch to epoch (and what ``last.pt`` restores)."""

    epoch: int = 0
    step: int = 0
    best: float = -1.0
    history: list[dict] = field(default_factory=list)


@dataclass
class RunContext:
    """Where a run is: its dir, process rank and device, and what it resumes from
    (``last.pt``'s content, the recipe changes a resume allowed)."""

    run_dir: Path
    rank: int
    world: int
    device: torch.device
    last_state: dict | None
    changes: dict[str, tuple[Any, Any]]


@dataclass
class TrainData:
    """The training set (``set_epoch`` each epoch), the validation split, the sampler
    and both loaders."""

    train_set: Any
    val_set: Any
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    depth_set: Any = None  # a multi-task run: where depth is scored (data.depth_val)
    depth_loader: torch.utils.data.DataLoader | None = None


def _fit(cfg: RunConfig, progress: RunProgress, *, resume: str | Path | None,
         run_dir: str | Path | None, show_progress: bool, resume_changed: bool) -> FitResult:
    """The body of :func:`fit`: the set-up steps, then the epochs; records in
    ``progress`` where it is."""
    check_trackers(cfg)  # a tracker's package missing: refused before anything runs
    ctx = setup_context(cfg, progress, resume, run_dir, resume_changed)
    torch.manual_seed(cfg.seed)
    class_names = cfg.class_names or dataset_classes(cfg.data, cfg.ignore_index)
    spec = student_spec(cfg, class_names, ctx.last_state)
    data = setup_data(cfg, spec, class_names, ctx.rank, ctx.world)
    student = setup_student(cfg, spec, ctx)
    teacher, t_spec = setup_teacher(cfg, spec, ctx.device)
    task = setup_task(cfg, student, spec, teacher, t_spec, ctx.device, ctx.world)
    # the criterion's parameters: KD adapters, a multi-task run's TaskBalance
    optimizer = build_optimizer(task.student, task.criterion, cfg)
    scheduler, total_steps, warmup_steps = setup_schedule(optimizer, cfg, len(data.loader))
    span = {"total_steps": total_steps, "warmup_steps": warmup_steps}  # recorded in last.pt
    state = RunState()
    if ctx.last_state is not None:
        state = restore_run(ctx.last_state, task, optimizer, scheduler, cfg, total_steps,
                            warmup_steps, ctx.run_dir)
    elif resume is not None:
        log.info(f"{ctx.run_dir} has no checkpoints/last.pt yet (stopped in its first "
                 "epoch): starting over in the same run dir")
    for k, (old, new) in ctx.changes.items():
        log.info(f"resume: {k} changed from {old!r} to {new!r}"
                 + ("" if k in RESUME_FREE_KEYS else " (--resume-changed)"))

    teacher_score = None
    if teacher is not None and ctx.rank == 0:
        teacher_score = preflight_teacher(cfg, teacher, data.val_loader, class_names,
                                          ctx.device)
    if resume is not None and ctx.rank == 0:  # every check passed: the run dir may change
        _commit_resume(cfg, ctx, progress, state)
    _commit_log(ctx.run_dir, ctx.rank)
    if teacher is not None and cfg.kd.cache:  # writes into the run dir: after the checks
        from compress.cache import CachedTeacher

        task.teacher = CachedTeacher.build(teacher, data.train_set, ctx.run_dir / "cache",
                                           cfg.kd.cache_scale, batch_size=cfg.data.batch_size,
                                           show=show_progress)

    ckpt_dir = ctx.run_dir / "checkpoints"
    if ctx.rank == 0 and cfg.train.save_untrained and ctx.last_state is None:
        save_checkpoint(ckpt_dir / "untrained.pt", student, spec, metrics=None,
                        config=cfg.model_dump(mode="json"), epoch=0, **_qat_extra(student, cfg))
    writer = start_trackers(cfg, ctx.run_dir) if ctx.rank == 0 else None  # TensorBoard, W&B...
    log.info(f"run dir {ctx.run_dir}: {cfg.name}, {len(data.train_set)} train / "
             f"{len(data.val_set)} val images, {model_label(spec)}, {len(class_names)} "
             f"classes, device {ctx.device}, world {ctx.world}")
    progress.epochs = cfg.train.epochs
    for epoch in range(state.epoch, cfg.train.epochs):
        progress.epoch = epoch + 1
        data.sampler.set_epoch(epoch)
        data.train_set.set_epoch(epoch)
        try:
            res, state.step = train_one_epoch(task, data.loader, optimizer, scheduler, cfg,
                                              epoch, state.step, ctx.device,
                                              show_progress and ctx.rank == 0)
        except TrainingDiverged as e:
            good = ckpt_dir / "last.pt"
            where = f"last good checkpoint: {good}" if good.exists() else "no checkpoint yet"
            raise TrainingDiverged(f"{e}; {where}") from None
        _check_finite(student, epoch, state.step, ckpt_dir / "last.pt")
        row = epoch_row(epoch, res, data)
        metrics = per_image = None
        if ctx.rank == 0 and ((epoch + 1) % cfg.train.val_every == 0
                                or epoch + 1 == cfg.train.epochs):
            metrics, per_image = validate(cfg, epoch, student, task.teacher, data, spec,
                                          class_names, ctx, row)
        state.history.append(row)
        state.epoch = epoch + 1
        if ctx.rank == 0:
            save_epoch(cfg, ctx.run_dir, state, student, spec, metrics, task, optimizer,
                       scheduler, span, teacher_score, writer, row, per_image)
            msg = " ".join(f"{k}={v:.4f}" for k, v in res.terms.items())
            val = f" val_mIoU={metrics['miou'] * 100:.2f}" if metrics else ""
            if metrics and "depth" in metrics:
                val += f" val_depth_RMSE={metrics['depth']['rmse']:.3f}"
            drawn = " ".join(f"{k}={v}" for k, v in row.items() if k.startswith("drawn_"))
            log.info(f"epoch {epoch + 1}/{cfg.train.epochs} {msg} lr={res.lr:.2e}{val} "
                     f"({res.seconds:.1f}s){' ' + drawn if drawn else ''}")
        if ctx.world > 1:
            dist.barrier()
    test = None
    if ctx.rank == 0:
        test = _test_split_pass(cfg, ctx.run_dir, student, task.teacher, spec, class_names,
                                ctx.device)
        _write_summary(ctx.run_dir, state.history, spec, state.best, test)
        writer.finish(state.epoch, test)
    if ctx.world > 1:
        dist.barrier()
    best = ckpt_dir / "best.pt"
    return FitResult(ctx.run_dir, best if best.is_file() else None, state.best,
                     state.history[-1] if state.history else None, len(state.history),
                     round(sum(r.get("epoch_seconds", 0) for r in state.history), 1), test)


# ---------------------------------------------------------------- the set-up steps


def setup_context(cfg: RunConfig, progress: RunProgress, resume: str | Path | None,
                run_dir: str | Path | None, resume_changed: bool) -> RunContext:
    """Processes, device and threads; a resume's checks (nothing is written until its
    state loaded); the run dir, its ``config.yaml`` (new runs) and the log."""
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
                               resume_changed, (last_state or {}).get("config"))
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
    return RunContext(run_dir, rank, world, device, last_state, changes)


def setup_data(cfg: RunConfig, spec: ModelSpec, class_names: list[str], rank: int,
               world: int) -> TrainData:
    """The training set (augmented, a mixture when ``data.extra_train``), the validation
    split, the per-epoch sampler and both loaders."""
    multitask = bool(spec.tasks)
    train_set = build_train_set(cfg.data, spec.mean, spec.std, cfg.ignore_index, cfg.seed,
                                with_depth=multitask)
    # a multi-task run without data.depth_val scores depth on the val split itself: its
    # items carry depth, and validate() scores both tasks in one pass
    depth_on_val = multitask and cfg.data.depth_val is None
    val_set = build_split(cfg.data, cfg.data.val_split, spec.mean, spec.std,
                          cfg.ignore_index, False, cfg.seed,
                          depth=cfg.data.depth if depth_on_val else "none",
                          with_depth=depth_on_val)
    if len(train_set.class_names) != len(class_names):
        raise ConfigError(f"class_names has {len(class_names)} entries but the data has "
                         f"{len(train_set.class_names)} classes")
    check_task_settings(cfg, class_names, list(train_set.class_names))
    for split in (getattr(train_set, "parts", [train_set])[0], val_set):  # 0/255 masks
        if (why := ignore_collision(split.source)) is not None:
            log.warning(f"warning: {why}")
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
    depth_set = depth_loader = None
    if depth_on_val:
        depth_set, depth_loader = val_set, val_loader
    elif multitask:
        depth_set = build_depth_val(cfg.data, spec.mean, spec.std, cfg.ignore_index,
                                    list(class_names))
        depth_loader = torch.utils.data.DataLoader(
            depth_set, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
            collate_fn=collate)
    return TrainData(train_set, val_set, sampler, loader, val_loader, depth_set, depth_loader)


def setup_student(cfg: RunConfig, spec: ModelSpec, ctx: RunContext) -> nn.Module:
    """The student on the device: new (encoder weights as the recipe says), from
    ``model.init_from``, or (a resume) its architecture for ``last.pt``'s weights; with
    ``quant.qat``, with NNCF's fake quantizers in it."""
    last_state = ctx.last_state
    if cfg.model.init_from and last_state is None:  # architecture and weights of a checkpoint
        student = load_model(cfg.model.init_from, spec=spec, trusted=recipe_factories(cfg))
        log.info(f"student initialised from {cfg.model.init_from}")
    else:
        student = create_model(spec, cfg.model.encoder_weights if last_state is None else None,
                               trusted=recipe_factories(cfg))
    student.to(ctx.device)
    if cfg.quant.qat:  # fake INT8 quantizers: fresh from calibration, or as last.pt had them
        student = _quantize_student(student, cfg, spec, last_state, ctx.run_dir)
    return student


def setup_teacher(cfg: RunConfig, spec: ModelSpec, device
                  ) -> tuple[Teacher | None, ModelSpec | None]:
    """The frozen teacher and its spec when the run distils (``cfg.kd.enabled``), else
    ``(None, None)``; its label map onto the student's classes is checked and set."""
    if not cfg.kd.enabled:
        return None, None
    teacher, t_spec = load_teacher(cfg, spec, cfg.kd.feature_taps, device)
    try:
        class_map = kd_class_map(cfg.kd.class_map, t_spec.class_names, spec.class_names)
    except ValueError as e:
        raise ConfigError(f"teacher.checkpoint {cfg.teacher.checkpoint}: {e}") from None
    for line in check_label_maps(t_spec, spec, class_map):
        log.info(line)
    teacher.class_map = class_map  # preflight and figures score it in student classes
    return teacher, t_spec


def setup_task(cfg: RunConfig, student: nn.Module, spec: ModelSpec, teacher: Teacher | None,
               t_spec: ModelSpec | None, device, world: int = 1) -> DistillationTask:
    """The KD step: the loss terms resolved once from the recipe, the adapters sized
    from one tiny forward of each model, the student wrapped in DDP when distributed."""
    kd = cfg.kd
    taps = kd.feature_taps
    t_channels = feature_channels(teacher.model, t_spec, taps, device) if teacher else {}
    s_channels = feature_channels(student, spec, taps, device)
    criterion = Distiller(
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
        student_channels=s_channels, teacher_channels=t_channels,
        class_map=teacher.class_map if teacher else None, ignore_index=cfg.ignore_index,
        task_weights=cfg.task_weights, balance=cfg.multitask.balance,
        depth_loss=_depth_loss(cfg),
    ).to(device)
    model = student
    if world > 1 and any(w == 0 for w in cfg.task_weights.values()):
        raise ConfigError("a multi-task task weight of 0 leaves its head without gradients, "
                          "which DistributedDataParallel refuses: train it in one process")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    return DistillationTask(model, criterion, teacher, amp if device.type == "cuda" else None)


def _depth_loss(cfg: RunConfig):
    """``multitask.depth_loss`` with its parameter, or None for a single-task run."""
    if not cfg.model.tasks:
        return None
    from functools import partial

    from compress.depth import berhu_loss, depth_loss_fn, silog_loss

    mt = cfg.multitask
    if mt.depth_loss == "silog":
        return partial(silog_loss, lam=mt.silog_lambda)
    if mt.depth_loss == "berhu":
        return partial(berhu_loss, c_ratio=mt.berhu_c)
    return depth_loss_fn(mt.depth_loss)


def setup_schedule(optimizer, cfg: RunConfig, batches: int) -> tuple[Scheduler, int, int]:
    """The LR scheduler and the (total, warm-up) optimizer steps it spans."""
    tc = cfg.train
    steps_per_epoch = math.ceil(min(batches, (tc.max_steps_per_epoch or 10**9)
                                    * tc.accum_steps) / tc.accum_steps)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = int(tc.warmup_epochs * steps_per_epoch)
    return (create_lr_scheduler(optimizer, tc.schedule, total_steps, warmup_steps),
            total_steps, warmup_steps)


def restore_run(last_state: dict, task: DistillationTask, optimizer, scheduler: Scheduler,
                cfg: RunConfig, total_steps: int, warmup_steps: int, run_dir: Path) -> RunState:
    """A resume: weights, optimizer, schedule, adapters, RNG and history from ``last.pt``."""
    unwrap(task.student).load_state_dict(last_state["state_dict"])
    recipe_hp = [(g["base_lr"], g["initial_lr"], g["weight_decay"])
                 for g in optimizer.param_groups]
    optimizer.load_state_dict(last_state["optimizer"])
    for g, (base_lr, initial, wd) in zip(optimizer.param_groups, recipe_hp):  # today's recipe
        g["base_lr"], g["initial_lr"], g["weight_decay"] = base_lr, initial, wd
    task.criterion.load_state_dict(last_state.get("distiller_state", {}), strict=False)
    state = RunState(last_state["epoch"], last_state["step"], last_state["best_miou"],
                     list(last_state["history"]))
    torch.set_rng_state(last_state["rng"]["torch"])
    log.info(f"resumed from {run_dir} at epoch {state.epoch}")
    saved = last_state.get("scheduler") or {}
    restore_scheduler(scheduler, saved)
    old_total = saved.get("total_steps", total_steps)
    if old_total != total_steps:
        lr0, sched, step = cfg.train.lr, cfg.train.schedule, state.step
        log.info(f"lr schedule recomputed for {cfg.train.epochs} epochs ({old_total} -> "
                 f"{total_steps} steps): lr at step {step} goes from "
                 f"{lr0 * lr_factor(step, old_total, warmup_steps, sched):.3g} "
                 f"to {lr0 * lr_factor(step, total_steps, warmup_steps, sched):.3g}")
    return state


def preflight_teacher(cfg: RunConfig, teacher: Teacher, val_loader, class_names: list[str],
                      device) -> dict:
    """Score the teacher on the validation split (in the student's classes); refuse one
    at chance unless ``teacher.allow_weak``."""
    score, conf = evaluate(teacher.predict, val_loader, class_names, cfg.ignore_index, device)
    log.info(f"teacher val mIoU {score['miou'] * 100:.2f}")
    weak = weak_teacher(score, conf)
    if weak and not cfg.teacher.allow_weak:
        raise ConfigError(f"teacher {cfg.teacher.checkpoint} scores {weak}: refusing to "
                         "distil from it (teacher.allow_weak=true to override)")
    if weak:
        log.warning(f"teacher scores {weak} (teacher.allow_weak=true)")
    return score


def _commit_resume(cfg: RunConfig, ctx: RunContext, progress: RunProgress,
                   state: RunState) -> None:
    """A resume passed every check: the run dir is ours again. Clear temp files of
    interrupted writes, record the resume in ``config.yaml``, catch metrics.csv up."""
    run_dir = ctx.run_dir
    progress.run_dir = run_dir
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temps(folder)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    note = None
    if ctx.changes:
        note = (f"resumed {datetime.now():%Y-%m-%d %H:%M:%S} at epoch {state.epoch}: "
                + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in ctx.changes.items()))
    atomic_write_text(run_dir / "config.yaml", _resumed_config_text(run_dir, cfg, note))
    if ctx.last_state is not None:  # a kill between last.pt and metrics.csv left it behind
        _write_metrics_csv(run_dir / "metrics.csv", state.history)


# ---------------------------------------------------------------- validate / save


def epoch_row(epoch: int, res: EpochResult, data: TrainData) -> dict[str, Any]:
    """The epoch's ``metrics.csv`` row so far: ``train_<term>`` for every named term, the
    draws of a mixture, the last LR and the timing (:func:`validate` adds ``val_*``)."""
    return {"epoch": epoch + 1, **{f"train_{k}": round(v, 6) for k, v in res.terms.items()},
            **drawn_mixture(data.train_set, data.sampler), "lr": res.lr,
            "epoch_seconds": round(res.seconds, 2),
            "step_ms_median": round(sorted(res.step_seconds)[len(res.step_seconds) // 2]
                                    * 1000, 2)}


def validate(cfg: RunConfig, epoch: int, student: nn.Module, teacher, data: TrainData, spec: ModelSpec,
             class_names: list[str], ctx: RunContext, row: dict[str, Any]
             ) -> tuple[dict, ImageCounts]:
    """Score the student on the validation split into ``row`` (``val_*``); the epoch's
    figure when ``train.vis_every`` says so. Returns the scores and the per-image counts
    (what ``val/per_image.npz`` keeps for the best epoch)."""
    dt = depth_task(spec)
    one_pass = dt is not None and data.depth_loader is data.val_loader
    counter = ImageCounter(str(ctx.run_dir))
    metrics, _ = evaluate(student, data.val_loader, class_names, cfg.ignore_index, ctx.device,
                          depth=dt if one_pass else None, per_image=counter)
    row.update(val_miou=round(metrics["miou"], 6), val_pixel_acc=round(metrics["pixel_acc"], 6),
               val_dice=round(metrics["dice"], 6))
    for k in ("fg_iou", "fg_dice", "hd95"):  # binary tasks
        if k in metrics:
            row[f"val_{k}"] = round(metrics[k], 4)
    if dt is not None and data.depth_loader is not None:  # a multi-task student
        if not one_pass:
            metrics["depth"] = evaluate_depth(student, data.depth_loader, dt.name, ctx.device,
                                              max_depth=dt.max_depth)
        depth = metrics["depth"]
        row.update({f"val_depth_{k}": round(depth[k], 6)
                    for k in ("rmse", "abs_rel", "delta1")})
    vis = cfg.train.vis_every
    if vis and ((epoch + 1) % vis == 0 or epoch + 1 == cfg.train.epochs):
        from compress.viz import save_depth_visual, save_epoch_visual

        save_epoch_visual(ctx.run_dir / "visualizations" / f"epoch_{epoch + 1:03d}.png",
                          student, teacher, data.val_set, spec, ctx.device)
        if dt is not None and data.depth_set is not None:
            save_depth_visual(ctx.run_dir / "visualizations" / f"epoch_{epoch + 1:03d}_depth.png",
                              student, data.depth_set, spec, ctx.device)
    return metrics, counter.counts(epoch=epoch + 1, split=cfg.data.val_split)


def save_epoch(cfg: RunConfig, run_dir: Path, state: RunState, student: nn.Module, spec: ModelSpec,
               metrics: dict | None, task: DistillationTask, optimizer, scheduler: Scheduler,
               span: dict[str, int], teacher_score: dict | None, writer,
               row: dict[str, Any], per_image: ImageCounts | None = None) -> None:
    """After an epoch (rank 0): ``best.pt`` when the mIoU improved
    (after its per-image val counts, ``val/per_image.npz``, which record the epoch they
    belong to), ``epoch_NNN.pt`` every ``train.save_every``, ``last.pt`` (everything a
    resume needs), then ``metrics.csv``; each written atomically; then the trackers
    (``writer``: :class:`compress.trackers.Trackers`) get the row and the epoch's figures."""
    epoch, ckpt_dir = state.epoch, run_dir / "checkpoints"
    common = {"config": cfg.model_dump(mode="json"), "epoch": epoch,
              "teacher_val": teacher_score, **_qat_extra(student, cfg)}
    if metrics is not None and metrics["miou"] > state.best:
        state.best = metrics["miou"]
        if per_image is not None:
            per_image.save(run_dir / VAL_PER_IMAGE)
        save_checkpoint(ckpt_dir / "best.pt", student, spec, metrics=metrics, **common)
    if cfg.train.save_every and epoch % cfg.train.save_every == 0:
        save_checkpoint(ckpt_dir / f"epoch_{epoch:03d}.pt", student, spec, metrics=metrics,
                        **common)
    save_checkpoint(
        ckpt_dir / "last.pt", student, spec, metrics=metrics, **common, step=state.step,
        best_miou=state.best, history=state.history, optimizer=optimizer.state_dict(),
        scheduler={"step": state.step, **span, "state": scheduler.state_dict()},
        distiller_state={k: v.cpu() for k, v in task.criterion.state_dict().items()},
        rng={"torch": torch.get_rng_state()},
    )
    _write_metrics_csv(run_dir / "metrics.csv", state.history)
    if writer is not None:
        writer.log_epoch(epoch, row)


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
    counter = ImageCounter(str(run_dir))
    metrics, _ = evaluate(student, loader, class_names, cfg.ignore_index, device,
                          per_image=counter)
    metrics.update(checkpoint=str(best), split=split, images=len(test_set))
    atomic_write_json(run_dir / "test" / "eval.json", metrics)
    counter.counts(split=split).save(run_dir / "test" / "per_image.npz")
    from compress.viz import save_epoch_visual

    save_epoch_visual(run_dir / "visualizations" / "test.png", student, teacher, test_set, spec,
                      device)
    log.info(f"test split {split!r} ({len(test_set)} images): mIoU {metrics['miou'] * 100:.2f} "
             f"with best.pt")
    return metrics


VAL_PER_IMAGE = Path("val") / "per_image.npz"  # best.pt's per-image counts on the val split


def val_image_counts(run_dir: str | Path, *, write: bool = True, device: str = "cpu",
                     show: bool = False, say: Callable[[str], None] = log.info) -> ImageCounts:
    """Per-image counts of a run's ``best.pt`` on its val split, for paired comparisons.

    ``val/per_image.npz`` when it holds ``best.pt``'s epoch; otherwise (a run from before
    these files, or one whose file belongs to another epoch) ``best.pt`` is scored on the
    val split of the run's ``config.yaml`` now, said through ``say``, and the file written
    when ``write`` (leave a run dir that is not yours untouched with ``write=False``).
    """
    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    ckpt = read_checkpoint(best)
    path = run_dir / VAL_PER_IMAGE
    if path.is_file():
        stored = ImageCounts.load(path, source=str(run_dir))
        if stored.meta.get("epoch") == ckpt.get("epoch"):
            return stored
        why = (f"its {VAL_PER_IMAGE} is of epoch {stored.meta.get('epoch')}, best.pt of "
               f"epoch {ckpt.get('epoch')}")
    else:
        why = f"no {VAL_PER_IMAGE} (a run from before per-image scores were kept)"
    cfg = load_config(run_dir / "config.yaml")
    spec = ckpt["spec"]
    say(f"{run_dir}: {why}: scoring checkpoints/best.pt on its val split "
        f"{cfg.data.val_split!r} now" + ("" if write else " (not written: not this study's run)"))
    val_set = build_split(cfg.data, cfg.data.val_split, spec.mean, spec.std, cfg.ignore_index,
                          False, cfg.seed)
    loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.data.batch_size,
                                         collate_fn=collate)
    counter = ImageCounter(str(run_dir))
    dev = resolve_device(device)
    evaluate(load_model(best, device=dev, trusted=recipe_factories(cfg)), loader, list(spec.class_names), cfg.ignore_index,
             dev, show=show, per_image=counter)
    counts = counter.counts(epoch=ckpt.get("epoch"), split=cfg.data.val_split)
    if write:
        counts.save(path)
    return counts


def _write_summary(run_dir: Path, history: list[dict], spec: ModelSpec, best: float,
                   test: dict | None = None) -> None:
    total = sum(r.get("epoch_seconds", 0) for r in history)
    summary = {
        "best_val_miou": best, "epochs": len(history), "train_seconds": round(total, 1),
        "spec": spec.to_dict(), "final": history[-1] if history else None,
        "test_miou": test["miou"] if test else None,
    }
    if spec.tasks:  # a multi-task run: the last validated epoch's depth metrics
        rows = [r for r in history if "val_depth_rmse" in r]
        summary["final_val_depth"] = ({k.removeprefix("val_depth_"): v for k, v in
                                       rows[-1].items() if k.startswith("val_depth_")}
                                      if rows else None)
    atomic_write_json(run_dir / "summary.json", summary)


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
    src = fit(t_cfg, show_progress=show_progress).best_checkpoint
    atomic_write(tc.checkpoint, lambda p: p.write_bytes(src.read_bytes()))
