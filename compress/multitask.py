"""Multi-task models: one shared network, a head per task, a dict of named outputs.

A model spec declares extra tasks under ``tasks`` (:mod:`compress.tasks`; absent or empty:
a single-task segmentation model, whose forward keeps returning logits).

Segmentation is always the first task (named ``seg``; its classes are the spec's
``classes`` / ``class_names``). A dense-regression task (``kind: depth``) gets a light head
on the features the segmentation classifier reads (smp's decoder output, or the input of a
zoo student's last classifier conv): conv3x3 - BN - ReLU - conv1x1, bilinear upsampling to
the input size, and a sigmoid mapped onto ``[min_depth, max_depth]`` in ``unit``. Its output
is ``[N, H, W]``.

:class:`MultiTaskModel`'s forward returns ``{"seg": logits [N, C, H, W], "depth": [N, H, W]}``
(keys in task order); exported ONNX graphs name their outputs after the tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.tasks import SEG, TaskSpec, parse_tasks, task_names


class DenseHead(nn.Module):
    """conv3x3 - BN - ReLU - conv1x1 -> one channel, upsampled, squashed into a range."""

    def __init__(self, in_channels: int, task: TaskSpec) -> None:
        super().__init__()
        c = task.channels
        self.block = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                   nn.Conv2d(c, 1, 1))
        self.lo, self.hi = task.min_depth, task.max_depth

    def forward(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # always resized (a no-op at full resolution) so traced graphs keep any input size
        z = F.interpolate(self.block(feats), size=size, mode="bilinear", align_corners=False)
        return self.lo + (self.hi - self.lo) * torch.sigmoid(z[:, 0])


_CONV = nn.modules.conv._ConvNd  # every ConvNd (Torch-Pruning shrinks the same ones)


def head_layers(model: nn.Module, classes: int) -> list[nn.Module]:
    """The layers whose outputs are the classes: smp's ``segmentation_head`` when the
    model has one, else the last conv/linear with ``classes`` outputs (never pruned)."""
    head = getattr(model, "segmentation_head", None)
    if isinstance(head, nn.Module):
        return [head]
    last = [m for m in model.modules() if (isinstance(m, _CONV) and m.out_channels == classes)
            or (isinstance(m, nn.Linear) and m.out_features == classes)]
    return last[-1:]


def classifier_layer(model: nn.Module, classes: int) -> nn.Module:
    """The layer whose input is the features the segmentation classes are read from:
    smp's ``segmentation_head``, else the last conv/linear with ``classes`` outputs."""
    heads = head_layers(model, classes)
    if not heads:
        raise ValueError(f"no classifier layer with {classes} outputs: a task head needs one")
    return heads[0]


def _in_channels(layer: nn.Module) -> int:
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"{type(layer).__name__}: no conv or linear layer to read channels from")


class MultiTaskModel(nn.Module):
    """A segmentation model (``base``) plus one head per extra task on shared features."""

    def __init__(self, base: nn.Module, classes: int, tasks: tuple[TaskSpec, ...]) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one extra task")
        self.base = base
        self.task_specs = tasks
        layer = classifier_layer(base, classes)
        self.heads = nn.ModuleDict({t.name: DenseHead(_in_channels(layer), t) for t in tasks})
        self._feats: torch.Tensor | None = None
        # a bound method survives deepcopy (rebound to the copy) and pickling of the spec
        layer.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._feats = args[0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._feats = None
        logits = self.base(x)
        feats, self._feats = self._feats, None
        if feats is None:
            raise RuntimeError("the classifier layer did not run: no shared features")
        size = tuple(x.shape[-2:])
        return {SEG: logits, **{name: head(feats, size) for name, head in self.heads.items()}}


def attach_tasks(model: nn.Module, spec) -> nn.Module:
    """``model`` with the heads of ``spec.tasks`` (unchanged when there are none, or when
    it already has them: ``compress.models.create_model`` attaches them itself)."""
    if isinstance(model, MultiTaskModel):
        return model
    tasks = spec.tasks or ()
    return MultiTaskModel(model, spec.classes, tasks) if tasks else model


def seg_logits(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The segmentation logits of a model's output (single- or multi-task)."""
    return output[SEG] if isinstance(output, dict) else output


class TaskBalance(nn.Module):
    """How the tasks' losses add up: fixed weights, or learned uncertainty weighting
    (Kendall, Gal and Cipolla, CVPR 2018).

    ``fixed``: ``sum_i w_i * L_i``. ``uncertainty``: ``sum_i exp(-s_i) * L_i + s_i`` with one
    learned ``s_i = log(sigma_i^2)`` per task (initialised to ``-log(w_i)``, so training
    starts from the fixed weights); at its optimum ``exp(s_i) = L_i``, so a task whose loss
    is large in its own units is weighted down. ``weights()`` gives the weights in use
    (logged per epoch).
    """

    def __init__(self, weights: dict[str, float], mode: str = "fixed") -> None:
        super().__init__()
        if mode not in ("fixed", "uncertainty"):
            raise ValueError(f"unknown task balance {mode!r}; valid: fixed, uncertainty")
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError(f"task weights must be positive (got {weights})")
        self.mode, self.names = mode, list(weights)
        self.register_buffer("fixed", torch.tensor([float(w) for w in weights.values()]))
        self.log_vars = (nn.Parameter(-torch.log(self.fixed.clone()))
                         if mode == "uncertainty" else None)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([losses[n] for n in self.names])
        if self.log_vars is None:
            return (self.fixed * stacked).sum()
        return (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()

    def weights(self) -> dict[str, float]:
        w = self.fixed if self.log_vars is None else torch.exp(-self.log_vars.detach())
        return {n: float(v) for n, v in zip(self.names, w)}


def depth_task(spec) -> TaskSpec | None:
    """The depth task of a :class:`compress.spec.ModelSpec`, or None (single-task)."""
    tasks = spec.tasks or ()
    return tasks[0] if tasks else None


__all__ = ["SEG", "DenseHead", "MultiTaskModel", "TaskBalance", "TaskSpec", "attach_tasks",
           "classifier_layer", "depth_task", "head_layers", "parse_tasks", "seg_logits",
           "task_names"]
