"""The one training loop. ``compress train`` and ``compress distill`` both call :func:`fit`;
distillation is training plus a frozen teacher plus extra named loss terms, all in one
:class:`compress.distill.DistillationTask` that the loop only calls.

Read top to bottom: :func:`fit` runs the named set-up steps (:func:`setup_context`,
:func:`setup_data`, :func:`setup_student`, :func:`setup_teacher`, :func:`setup_task`,
:func:`build_optimizer`, :func:`setup_schedule`, :func:`restore_run` on a resume), then
loops :func:`train_one_epoch`, :func:`validate` and :func:`save_epoch` (checkpoints written
atomically), and returns a :class:`FitResult`. What it calls lives with its owner: the run
dir (:mod:`compress.rundir`), optimizer and LR schedule (:mod:`compress.schedule`),
scoring (:mod:`compress.evaluate`), loaders (:mod:`compress.data.loader`), devices
(:mod:`compress.devices`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.scheduler.scheduler import Scheduler
from torch import nn
from tqdm import tqdm

from compress import distill, rundir, schedule
from compress.cache import CachedTeacher
from compress.config import ConfigError, RunConfig, check_task_settings, dump_config
from compress.data import (
    EpochSampler,
    build_depth_val,
    build_split,
    build_train_set,
    collate,
    dataset_classes,
    drawn_mixture,
    ignore_collision,
)
from compress.devices import distributed_info, init_device
from compress.distill import DistillationTask, Teacher
from compress.errors import TrainingDiverged
from compress.evaluate import evaluate, evaluate_depth
from compress.evidence import ImageCounter, ImageCounts
from compress.io import atomic_write, atomic_write_text, fault_point
from compress.losses import diverged_terms
from compress.models import create_model, load_model, save_checkpoint, unwrap
from compress.multitask import depth_task
from compress.qat import qat_extra, quantize_for_training
from compress.schedule import build_optimizer
from compress.spec import ModelSpec, model_label
from compress.trackers import check_trackers, start_trackers
from compress.viz import save_epoch_figures

log = logging.getLogger("compress")


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
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}"
                                   f" ({diverged_terms(terms, tc)})")
        scaler.scale(loss / tc.accum_steps).backward()
        if (i + 1) % tc.accum_steps == 0 or i + 1 == total:
            schedule.set_step_lr(scheduler, step)
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


# ---------------------------------------------------------------- fit


def _check_finite(model: nn.Module, epoch: int, step: int, good: Path) -> None:
    """Refuse to checkpoint weights or BatchNorm statistics that became NaN/inf."""
    bad = [k for k, v in unwrap(model).state_dict().items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        where = f"last good checkpoint: {good}" if good.exists() else "no checkpoint yet"
        raise TrainingDiverged(f"weights became NaN/inf ({bad[0]}) at epoch {epoch + 1}, step "
                               f"{step}; {where}")


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
    reason (:func:`compress.rundir.mark_failed`); finishing removes it
    (:func:`compress.rundir.clear_failed`).
    """
    progress = rundir.RunProgress()
    try:
        result = _fit(cfg, progress, resume=resume, run_dir=run_dir,
                      show_progress=show_progress, resume_changed=resume_changed)
    except (Exception, KeyboardInterrupt) as e:
        if progress.run_dir is not None:
            rundir.mark_failed(progress.run_dir, e, progress)
        raise
    if progress.run_dir is not None:
        rundir.clear_failed(result.run_dir)
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


def _fit(cfg: RunConfig, progress: rundir.RunProgress, *, resume: str | Path | None,
         run_dir: str | Path | None, show_progress: bool, resume_changed: bool) -> FitResult:
    """The body of :func:`fit`: the set-up steps, then the epochs; records in
    ``progress`` where it is."""
    check_trackers(cfg)  # a tracker's package missing: refused before anything runs
    ctx = setup_context(cfg, progress, resume, run_dir, resume_changed)
    torch.manual_seed(cfg.seed)
    class_names = cfg.class_names or dataset_classes(cfg.data, cfg.ignore_index)
    spec = distill.student_spec(cfg, class_names, ctx.last_state)
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
                 + ("" if k in rundir.RESUME_FREE_KEYS else " (--resume-changed)"))

    teacher_score = None
    if teacher is not None and ctx.rank == 0:
        teacher_score = distill.preflight_teacher(cfg, teacher, data.val_loader, class_names,
                                                  ctx.device, show_progress)
    if resume is not None and ctx.rank == 0:  # every check passed: the run dir may change
        progress.run_dir = ctx.run_dir
        rundir.commit_resume(ctx.run_dir, cfg, ctx.changes, state.epoch,
                             state.history if ctx.last_state is not None else None)
    rundir.commit_log(ctx.run_dir, ctx.rank)
    if teacher is not None and cfg.kd.cache:  # writes into the run dir: after the checks
        task.teacher = CachedTeacher.build(teacher, data.train_set, ctx.run_dir / "cache",
                                           cfg.kd.cache_scale, batch_size=cfg.data.batch_size,
                                           show=show_progress)

    ckpt_dir = ctx.run_dir / "checkpoints"
    if ctx.rank == 0 and cfg.train.save_untrained and ctx.last_state is None:
        save_checkpoint(ckpt_dir / "untrained.pt", student, spec, metrics=None,
                        config=cfg.model_dump(mode="json"), epoch=0,
                        **qat_extra(unwrap(student), cfg))
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
                                          class_names, ctx, row, show_progress)
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
        test = rundir.score_test_split(cfg, ctx.run_dir, student, task.teacher, spec,
                                       class_names, ctx.device)
        rundir.write_summary(ctx.run_dir, state.history, spec, state.best, test)
        writer.finish(state.epoch, test)
    if ctx.world > 1:
        dist.barrier()
    best = ckpt_dir / "best.pt"
    return FitResult(ctx.run_dir, best if best.is_file() else None, state.best,
                     state.history[-1] if state.history else None, len(state.history),
                     round(sum(r.get("epoch_seconds", 0) for r in state.history), 1), test)


# ---------------------------------------------------------------- the set-up steps


def setup_context(cfg: RunConfig, progress: rundir.RunProgress, resume: str | Path | None,
                run_dir: str | Path | None, resume_changed: bool) -> RunContext:
    """Processes, device and threads; a resume's checks (nothing is written until its
    state loaded); the run dir, its ``config.yaml`` (new runs) and the log."""
    rank, world = distributed_info()
    device = init_device(cfg.train.device, cfg.train.threads, world)
    last_state, changes = None, {}
    if resume is not None:  # every check first: nothing is written until the state loaded
        run_dir, last_state, changes = rundir.open_resume(resume, cfg, resume_changed)
    run_dir = Path(run_dir) if run_dir else rundir.make_run_dir(cfg)
    if world > 1:  # every rank must agree on rank 0's run dir
        obj = [str(run_dir)]
        dist.broadcast_object_list(obj, src=0)
        run_dir = Path(obj[0])
    if resume is None:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    rundir.setup_logging(run_dir, rank, buffered=resume is not None)
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
        student = load_model(cfg.model.init_from, spec=spec, trusted=distill.recipe_factories(cfg))
        log.info(f"student initialised from {cfg.model.init_from}")
    else:
        student = create_model(spec, cfg.model.encoder_weights if last_state is None else None,
                               trusted=distill.recipe_factories(cfg))
    student.to(ctx.device)
    if cfg.quant.qat:  # fake INT8 quantizers: fresh from calibration, or as last.pt had them
        student = quantize_for_training(student, cfg, spec, last_state, ctx.run_dir)
    return student


def setup_teacher(cfg: RunConfig, spec: ModelSpec, device
                  ) -> tuple[Teacher | None, ModelSpec | None]:
    """The frozen teacher and its spec when the run distils (``cfg.kd.enabled``), else
    ``(None, None)``; its label map onto the student's classes is checked and set."""
    if not cfg.kd.enabled:
        return None, None
    teacher, t_spec = distill.load_teacher(cfg, spec, cfg.kd.feature_taps, device)
    # preflight and figures score it in the student's classes
    teacher.class_map = distill.teacher_class_map(cfg, t_spec, spec)
    return teacher, t_spec


def setup_task(cfg: RunConfig, student: nn.Module, spec: ModelSpec, teacher: Teacher | None,
               t_spec: ModelSpec | None, device, world: int = 1) -> DistillationTask:
    """The KD step: the loss terms resolved once from the recipe, the adapters sized
    from one tiny forward of each model, the student wrapped in DDP when distributed."""
    taps = cfg.kd.feature_taps
    t_channels = distill.feature_channels(teacher.model, t_spec, taps, device) if teacher else {}
    s_channels = distill.feature_channels(student, spec, taps, device)
    criterion = distill.create_distiller(cfg, s_channels, t_channels,
                                 teacher.class_map if teacher else None).to(device)
    model = student
    if world > 1 and any(w == 0 for w in cfg.task_weights.values()):
        raise ConfigError("a multi-task task weight of 0 leaves its head without gradients, "
                          "which DistributedDataParallel refuses: train it in one process")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    return DistillationTask(model, criterion, teacher, amp if device.type == "cuda" else None)


def setup_schedule(optimizer, cfg: RunConfig, batches: int) -> tuple[Scheduler, int, int]:
    """The LR scheduler and the (total, warm-up) optimizer steps it spans."""
    tc = cfg.train
    total, warmup = schedule.schedule_steps(batches, tc.epochs, tc.warmup_epochs,
                                            tc.accum_steps, tc.max_steps_per_epoch)
    return schedule.create_lr_scheduler(optimizer, tc.schedule, total, warmup), total, warmup


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
    schedule.restore_scheduler(scheduler, saved)
    old_total = saved.get("total_steps", total_steps)
    if old_total != total_steps:
        log.info(schedule.lr_change(cfg.train.lr, cfg.train.schedule, state.step, old_total,
                                    total_steps, warmup_steps, cfg.train.epochs))
    return state


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
             class_names: list[str], ctx: RunContext, row: dict[str, Any], show: bool = False
             ) -> tuple[dict, ImageCounts]:
    """Score the student on the validation split into ``row`` (``val_*``; a progress bar
    with ``show``); the epoch's figure when ``train.vis_every`` says so. Returns the scores and the per-image counts
    (what ``val/per_image.npz`` keeps for the best epoch)."""
    dt = depth_task(spec)
    one_pass = dt is not None and data.depth_loader is data.val_loader
    counter = ImageCounter(str(ctx.run_dir))
    metrics, _ = evaluate(student, data.val_loader, class_names, cfg.ignore_index, ctx.device,
                          depth=dt if one_pass else None, per_image=counter, show=show,
                          desc=f"val {epoch + 1}")
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
        save_epoch_figures(ctx.run_dir / "visualizations", epoch + 1, student, teacher,
                           data.val_set, data.depth_set if dt is not None else None, spec,
                           ctx.device)
    return metrics, counter.counts(epoch=epoch + 1, split=cfg.data.val_split)


def save_epoch(cfg: RunConfig, run_dir: Path, state: RunState, student: nn.Module, spec: ModelSpec,
               metrics: dict | None, task: DistillationTask, optimizer, scheduler: Scheduler,
               span: dict[str, int], teacher_score: dict | None, writer,
               row: dict[str, Any], per_image: ImageCounts | None = None) -> None:
    """After an epoch (rank 0): ``best.pt`` when the mIoU improved (after its per-image val
    counts, ``val/per_image.npz``, which record the epoch they belong to), ``epoch_NNN.pt``
    every ``train.save_every``, ``last.pt`` (everything a resume needs), then
    ``metrics.csv``; each written atomically; then the trackers (``writer``:
    :class:`compress.trackers.Trackers`) get the row and the epoch's figures."""
    epoch, ckpt_dir = state.epoch, run_dir / "checkpoints"
    common = {"config": cfg.model_dump(mode="json"), "epoch": epoch,
              "teacher_val": teacher_score, **qat_extra(unwrap(student), cfg)}
    if metrics is not None and metrics["miou"] > state.best:
        state.best = metrics["miou"]
        if per_image is not None:
            per_image.save(run_dir / rundir.VAL_PER_IMAGE)
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
    rundir.write_metrics_csv(run_dir / "metrics.csv", state.history)
    if writer is not None:
        writer.log_epoch(epoch, row)


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
