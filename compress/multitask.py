"""Multi-task models: one shared network, a head per task, a dict of named outputs.

A model spec declares extra tasks under ``tasks`` (absent or empty: a single-task
segmentation model, whose forward keeps returning logits)::

    tasks:
      - {name: depth, kind: depth, unit: m, min_depth: 0.5, max_depth: 30.0, channels: 32}

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

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import UserError

TASK_KINDS = ("depth",)
SEG = "seg"
MAX_TASKS = 4


class TaskSpecError(UserError, ValueError):
    """A bent ``tasks`` entry of a model spec; the message names the file and key."""


@dataclass(frozen=True)
class TaskSpec:
    """One extra (non-segmentation) task of a multi-task model."""

    name: str
    kind: str = "depth"
    unit: str = "m"
    min_depth: float = 0.5
    max_depth: float = 80.0
    channels: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_tasks(value: Any, where: str = "") -> tuple[TaskSpec, ...]:
    """The spec's ``tasks`` as :class:`TaskSpec` s (``None`` / ``[]``: single task).

    Raises:
        TaskSpecError: one line naming ``where`` and the bad key or value.
    """
    if value is None:
        return ()
    pre = f"{where}: " if where else ""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_TASKS:
        raise TaskSpecError(f"{pre}model spec key 'tasks': a list of at most {MAX_TASKS} tasks "
                         f"(got {str(value)[:60]})")
    fields = set(TaskSpec.__dataclass_fields__)
    out: list[TaskSpec] = []
    for n, item in enumerate(value):
        key = f"tasks[{n}]"
        if not isinstance(item, dict):
            raise TaskSpecError(f"{pre}model spec key '{key}': a mapping (got {str(item)[:60]})")
        unknown = sorted(set(item) - fields)
        if unknown:
            raise TaskSpecError(f"{pre}model spec key '{key}.{unknown[0]}' is unknown; valid: "
                             f"{', '.join(sorted(fields))}")
        name = item.get("name")
        if not isinstance(name, str) or not name.isidentifier() or name in (SEG, "logits"):
            raise TaskSpecError(f"{pre}model spec key '{key}.name': an identifier other than "
                             f"'seg' and 'logits' (got {name!r})")
        if item.get("kind", "depth") not in TASK_KINDS:
            raise TaskSpecError(f"{pre}model spec key '{key}.kind': one of "
                             f"{', '.join(TASK_KINDS)} (got {item.get('kind')!r})")
        lo, hi = item.get("min_depth", 0.5), item.get("max_depth", 80.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) \
                or not 0 < lo < hi <= 1e5:
            raise TaskSpecError(f"{pre}model spec key '{key}': 0 < min_depth < max_depth <= 1e5 "
                             f"(got {lo!r}, {hi!r})")
        ch = item.get("channels", 32)
        if not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= 1024:
            raise TaskSpecError(f"{pre}model spec key '{key}.channels': an integer in 1..1024 "
                             f"(got {ch!r})")
        unit = item.get("unit", "m")
        if not isinstance(unit, str) or not 0 < len(unit) <= 8:
            raise TaskSpecError(f"{pre}model spec key '{key}.unit': a short string (got {unit!r})")
        out.append(TaskSpec(name=name, kind="depth", unit=unit, min_depth=float(lo),
                            max_depth=float(hi), channels=ch))
    if len({t.name for t in out}) != len(out):
        raise TaskSpecError(f"{pre}model spec key 'tasks': task names repeat")
    return tuple(out)


def task_names(spec: dict[str, Any]) -> list[str]:
    """Output names of a spec's model: ``["seg", ...extra tasks]`` for a multi-task
    model, ``["logits"]`` for a single-task one."""
    extra = parse_tasks(spec.get("tasks"))
    return [SEG, *(t.name for t in extra)] if extra else ["logits"]


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


def classifier_layer(model: nn.Module, classes: int) -> nn.Module:
    """The layer whose input is the features the segmentation classes are read from:
    smp's ``segmentation_head``, else the last conv/linear with ``classes`` outputs."""
    from compress.prune import head_layers

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


def attach_tasks(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """``model`` with the heads of ``spec["tasks"]`` (unchanged when there are none, or
    when it already has them: ``compress.models.create_model`` attaches them itself)."""
    if isinstance(model, MultiTaskModel):
        return model
    tasks = parse_tasks(spec.get("tasks"))
    return MultiTaskModel(model, int(spec["classes"]), tasks) if tasks else model


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
