"""Structured channel pruning (Torch-Pruning, DepGraph) and the pruned widths in a spec.

A pruned model is the unpruned architecture with some layers thinner. Its spec records,
under ``pruned_shapes``, the new shape of every parameter or buffer that changed; the
model is rebuilt by :func:`compress.models.create_model` (unpruned) and then
:func:`compress.shrink.shrink_to_shapes`, before its state_dict loads: no pickled module, and the
checkpoint still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.data import split_images
from compress.errors import UserError
from compress.macs import count_flops
from compress.models import ModelError, create_model, load_model, save_checkpoint
from compress.multitask import head_layers
from compress.outdir import new_output
from compress.spec import ModelSpec


class PruneError(UserError, ValueError):
    """A ``compress prune`` request that cannot be carried out (targets, options, data);
    the message names the option."""


log = logging.getLogger("compress")

IMPORTANCES = ("magnitude", "taylor")
_CONV = nn.modules.conv._ConvNd  # every ConvNd: the layers Torch-Pruning shrinks


def changed_shapes(model: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """``{name: shape}`` of every parameter/buffer of ``model`` whose shape differs from
    the same tensor of ``reference`` (the unpruned architecture)."""
    ref = reference.state_dict()
    return {k: list(v.shape) for k, v in model.state_dict().items()
            if k in ref and tuple(v.shape) != tuple(ref[k].shape)}


# ---------------------------------------------------------------- pruning


@dataclass
class PruneResult:
    """What :func:`prune_model` did (MACs by :func:`compress.macs.count_flops`, the one
    definition of GMACs every table uses)."""

    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    target_macs: float
    ratio: float
    trials: int
    ratio_high: float | None = None  # the refinement's second ratio (None: one ratio)
    layers_at_high: int = 0  # how many layers (in model order) were pruned at ratio_high


def prune_model(model: nn.Module, example: torch.Tensor, *, target_macs: float,
                importance: str = "magnitude", steps: int = 5, round_to: int = 8,
                classes: int, grad_fn: Callable[[nn.Module], None] | None = None,
                tolerance: float = 0.02, max_ratio: float = 0.9,
                search_steps: int = 10) -> tuple[nn.Module, PruneResult]:
    """Prune channels until the model costs about ``target_macs`` at ``example``'s size.

    Each trial prunes a fresh copy in ``steps`` iterative steps (importance re-estimated
    before each) to a per-layer channel ratio; the ratio is bisected until the MACs land
    within ``tolerance`` of the target (or ``search_steps`` trials ran). Rounding to
    ``round_to`` makes the MACs jump between neighbouring ratios (every layer of a width
    crosses a multiple of 8 at once), so when the target falls in such a jump the search
    is refined: the first ``k`` prunable layers (in model order) take the ratio just above
    the target's, the rest the ratio just below, and ``k`` is bisected. The trial closest
    to the target is kept. Channel counts are rounded down to multiples of
    ``round_to``; the head layers (:func:`head_layers`) are never pruned.

    Args:
        model: eval-mode model ``[N, 3, H, W] -> [N, C, H, W]``; not modified.
        example: ``[1, 3, H, W]`` input at the size the MACs are counted at.
        target_macs: MACs to reach.
        importance: ``magnitude`` (L2 of the weights) or ``taylor`` (first-order Taylor:
            needs ``grad_fn``, which runs a few training batches backward).
        classes: output classes (finds the head when the model has no segmentation_head).

    Returns:
        ``(pruned model, PruneResult)``.

    Raises:
        ValueError: unknown importance, bad steps, or Taylor without ``grad_fn``.
    """
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise PruneError(f"prune: unknown importance {importance!r}; valid: "
                         f"{', '.join(IMPORTANCES)}")
    if importance == "taylor" and grad_fn is None:
        raise PruneError("prune: Taylor importance needs training batches (--data)")
    if steps < 1:
        raise PruneError(f"prune: --steps must be >= 1, got {steps}")
    model = model.eval()
    macs0, params0 = cost(model, example)

    def trial(ratio: float, high: dict[str, float] | None = None
              ) -> tuple[nn.Module, float, int]:
        m = copy.deepcopy(model)
        imp = (tp.importance.TaylorImportance() if importance == "taylor"
               else tp.importance.MagnitudeImportance(p=2))
        per_layer = {m.get_submodule(name): r for name, r in (high or {}).items()}
        pruner = tp.pruner.MetaPruner(
            m, example, importance=imp, pruning_ratio=ratio, iterative_steps=steps,
            pruning_ratio_dict=per_layer or None,
            round_to=round_to, ignored_layers=head_layers(m, classes))
        for _ in range(steps):
            if grad_fn is not None and importance == "taylor":
                m.zero_grad(set_to_none=True)
                grad_fn(m)
            pruner.step()
        m.zero_grad(set_to_none=True)
        macs, params = cost(m.eval(), example)
        return m, macs, params

    def close(macs: float) -> bool:
        return abs(macs - target_macs) <= tolerance * target_macs

    lo, hi = 0.0, max_ratio  # MACs above the target at lo, below it at hi
    best = None
    n = 0
    for n in range(1, search_steps + 1):
        ratio = (lo + hi) / 2
        m, macs, params = trial(ratio)
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (m, macs, params, ratio, None, 0)
        log.info(f"prune: ratio {ratio:.3f} -> {macs / 1e9:.4f} GMACs "
                 f"(target {target_macs / 1e9:.4f})")
        if close(macs):
            break
        lo, hi = (ratio, hi) if macs > target_macs else (lo, ratio)
    if not close(best[1]) and hi > lo:
        # refine inside the jump: layers [0, k) at ratio hi, the rest at lo; MACs fall with k
        heads = {id(x) for h in head_layers(model, classes) for x in h.modules()}
        names = [name for name, mod in model.named_modules()
                 if isinstance(mod, (_CONV, nn.Linear)) and id(mod) not in heads]
        k_lo, k_hi = 0, len(names)
        while k_hi - k_lo > 1 and not close(best[1]):
            k = (k_lo + k_hi) // 2
            n += 1
            m, macs, params = trial(lo, {name: hi for name in names[:k]})
            if abs(macs - target_macs) < abs(best[1] - target_macs):
                best = (m, macs, params, lo, hi, k)
            log.info(f"prune: ratio {hi:.3f} on the first {k} of {len(names)} layers, "
                     f"{lo:.3f} after -> {macs / 1e9:.4f} GMACs")
            k_lo, k_hi = (k, k_hi) if macs > target_macs else (k_lo, k)
    m, macs, params, ratio, ratio_high, k = best
    return m.eval(), PruneResult(macs0, macs, params0, params, target_macs, ratio, n,
                                 ratio_high, k)


def taylor_batches(data_kind: str, root: str | None, spec: ModelSpec, size: tuple[int, int],
                   batches: int, batch_size: int) -> Callable[[nn.Module], None]:
    """A ``grad_fn`` for Taylor importance: cross-entropy on ``batches`` batches of the
    train split (the data's own labels), gradients accumulated into the model."""
    n = batches * batch_size
    ds = split_images(data_kind, root, "train", size=size, mean=spec.mean, std=spec.std,
                      ignore_index=spec.ignore_index, count=max(n, 1))
    if len(ds.class_names) != spec.classes:
        raise PruneError(f"prune: the {data_kind} data has {len(ds.class_names)} classes, the "
                         f"model {spec.classes}: Taylor importance needs the model's own data")
    items = [ds[i] for i in range(min(n, len(ds)))]
    groups = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def grad_fn(model: nn.Module) -> None:
        model.eval()  # BatchNorm statistics stay as trained
        for group in groups:
            x = torch.stack([it["image"] for it in group])
            y = torch.stack([it["mask"] for it in group])
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, ignore_index=spec.ignore_index)
            loss.backward()

    return grad_fn


def prune_checkpoint(checkpoint: str | Path, out: str | Path, *, macs_ratio: float | None = None,
                     target_gmacs: float | None = None, importance: str = "magnitude",
                     steps: int = 5, round_to: int = 8, data: str | Path | None = None,
                     data_kind: str = "camvid", batches: int = 4, batch_size: int = 4,
                     size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Prune a checkpoint's model to a MAC target and write a self-describing checkpoint.

    Args:
        checkpoint: a segcompress checkpoint (e.g. a trained teacher).
        out: the pruned checkpoint (must not exist).
        macs_ratio: target as a fraction of the model's MACs (0.5: half), or
        target_gmacs: target in GMACs; give one of the two.
        importance: ``magnitude`` or ``taylor`` (needs ``data``).
        size: ``(H, W)`` the MACs are counted at; default the spec's input size.

    Returns:
        A summary: ``{"out", "gmacs_before", "gmacs_after", "params_before",
        "params_after", "target_gmacs", "ratio", "pruned_tensors"}``.

    Raises:
        PruneError: no or both targets, a target out of range, a bad option.
        OutputError: ``out`` exists (or is a dangling symlink).
        ModelError: an unreadable checkpoint.
    """
    out = Path(out)
    if (macs_ratio is None) == (target_gmacs is None):
        raise PruneError("prune: give --macs-ratio or --target-gmacs (one of them)")
    if macs_ratio is not None and not 0 < macs_ratio < 1:
        raise PruneError(f"prune: --macs-ratio must be in (0, 1), got {macs_ratio}")
    if batches < 1:
        raise PruneError(f"prune: --batches must be >= 1, got {batches}")
    new_output(out, "prune: --out")
    model, spec = load_model(checkpoint, return_spec=True)
    if spec.tasks:
        raise ModelError(f"{checkpoint}: a multi-task model (spec key 'tasks') cannot be "
                         "pruned yet; prune the segmentation model, then add the tasks")
    if spec.factory:
        raise ModelError(f"{checkpoint}: a custom-factory model cannot be pruned into a spec "
                         "(only smp and zoo architectures are rebuilt by name)")
    h, w = size or tuple(spec.input_size)
    example = torch.zeros(1, 3, h, w)
    macs0, _ = cost(model, example)
    target = macs0 * macs_ratio if macs_ratio is not None else target_gmacs * 1e9
    if not 0 < target < macs0:
        raise PruneError(f"prune: target {target / 1e9:.3f} GMACs must be below the model's "
                         f"{macs0 / 1e9:.3f} GMACs at {h}x{w}")
    grad_fn = None
    if importance == "taylor":
        if data is None and data_kind != "synthetic":
            raise PruneError("prune: --importance taylor needs training images (--data DIR)")
        grad_fn = taylor_batches(data_kind, str(data) if data else None, spec, (h, w),
                                 batches, batch_size)
    pruned, res = prune_model(model, example, target_macs=target, importance=importance,
                              steps=steps, round_to=round_to, classes=spec.classes,
                              grad_fn=grad_fn)
    base = replace(spec, pruned_shapes=None)
    shapes = changed_shapes(pruned, create_model(base))
    new_spec = replace(base, pruned_shapes=shapes)
    record = {"from": Path(checkpoint).name, "importance": importance, "steps": steps,
              "round_to": round_to, "size": [h, w], "ratio": round(res.ratio, 4),
              "ratio_high": None if res.ratio_high is None else round(res.ratio_high, 4),
              "layers_at_high": res.layers_at_high,
              "gmacs_before": res.macs_before / 1e9, "gmacs_after": res.macs_after / 1e9,
              "params_before": int(res.params_before), "params_after": int(res.params_after),
              "target_gmacs": res.target_macs / 1e9}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, pruned, new_spec, metrics=None, epoch=0, pruning=record)
    miss = abs(res.macs_after - res.target_macs) / res.target_macs
    if miss > 0.05:
        log.warning(f"prune: {res.macs_after / 1e9:.3f} GMACs is {miss * 100:.1f}% from the "
                    f"target {res.target_macs / 1e9:.3f} (round_to={round_to} is coarse for "
                    "this model)")
    return {"out": str(out), **record, "pruned_tensors": len(shapes)}


def cost(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` of ``model`` at ``example``'s ``(H, W)``, batch 1, by the one
    counter (:func:`compress.macs.count_flops`): what targets aim at and records report."""
    res = count_flops(model, tuple(example.shape[-2:]), breakdown=False)
    return res.macs, res.params["total"]


def count_gmacs(model: nn.Module, size: Iterable[int]) -> float:
    """GMACs of ``model`` at ``(H, W)`` (:data:`compress.macs.GMACS_DEFINITION`), the
    figure prune targets and records use."""
    return count_flops(model, tuple(size), breakdown=False).gmacs
