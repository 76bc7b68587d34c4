"""The optimizer and its LR schedule: AdamW with the encoder at its own LR
(:func:`build_optimizer`), and the recipe's schedule as a timm scheduler stepped per
optimizer step (:func:`schedule_steps`, :func:`create_lr_scheduler`, :func:`set_step_lr`),
restored on a resume (:func:`restore_scheduler`; :func:`lr_change` says how the LR moves
when the run got longer)."""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from compress.config import RunConfig
from compress.models import unwrap


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


def schedule_steps(batches: int, epochs: int, warmup_epochs: float, accum_steps: int = 1,
                   max_steps_per_epoch: int | None = None) -> tuple[int, int]:
    """(total, warm-up) optimizer steps of a run: one step every ``accum_steps`` of an
    epoch's ``batches``, at most ``max_steps_per_epoch`` steps an epoch."""
    steps_per_epoch = math.ceil(min(batches, (max_steps_per_epoch or 10**9) * accum_steps)
                                / accum_steps)
    return steps_per_epoch * epochs, int(warmup_epochs * steps_per_epoch)


def lr_change(lr: float, schedule: str, step: int, old_total: int, total: int, warmup: int,
              epochs: int) -> str:
    """How a resume's LR at ``step`` changes when the schedule now spans ``total`` optimizer
    steps instead of ``old_total`` (``train.epochs`` changed): the line the run logs."""
    return (f"lr schedule recomputed for {epochs} epochs ({old_total} -> {total} steps): lr at "
            f"step {step} goes from {lr * lr_factor(step, old_total, warmup, schedule):.3g} "
            f"to {lr * lr_factor(step, total, warmup, schedule):.3g}")


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
