"""The tasks of a model beyond segmentation, as declared in its spec (torch-free, so
reading a spec from a manifest stays light). A spec's ``tasks`` is a list of mappings::

    tasks:
      - {name: depth, kind: depth, unit: m, min_depth: 0.5, max_depth: 30.0, channels: 32}

Segmentation is always the first task (``seg``); the model itself is built by
:mod:`compress.multitask`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from compress.errors import ModelError

TASK_KINDS = ("depth",)
SEG = "seg"
MAX_TASKS = 4


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
        ModelError: one line naming ``where`` and the bad key or value.
    """
    if value is None:
        return ()
    pre = f"{where}: " if where else ""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_TASKS:
        raise ModelError(f"{pre}model spec key 'tasks': a list of at most {MAX_TASKS} tasks "
                         f"(got {str(value)[:60]})")
    fields = set(TaskSpec.__dataclass_fields__)
    out: list[TaskSpec] = []
    for n, item in enumerate(value):
        key = f"tasks[{n}]"
        if not isinstance(item, dict):
            raise ModelError(f"{pre}model spec key '{key}': a mapping (got {str(item)[:60]})")
        unknown = sorted(set(item) - fields)
        if unknown:
            raise ModelError(f"{pre}model spec key '{key}.{unknown[0]}' is unknown; valid: "
                             f"{', '.join(sorted(fields))}")
        name = item.get("name")
        if (not isinstance(name, str) or not name.isidentifier() or name.startswith("_")
                or name in (SEG, "logits")):
            raise ModelError(f"{pre}model spec key '{key}.name': an identifier not starting "
                             f"with '_', other than 'seg' and 'logits' (got {name!r})")
        if item.get("kind", "depth") not in TASK_KINDS:
            raise ModelError(f"{pre}model spec key '{key}.kind': one of "
                             f"{', '.join(TASK_KINDS)} (got {item.get('kind')!r})")
        lo, hi = item.get("min_depth", 0.5), item.get("max_depth", 80.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) \
                or not 0 < lo < hi <= 1e5:
            raise ModelError(f"{pre}model spec key '{key}': 0 < min_depth < max_depth <= 1e5 "
                             f"(got {lo!r}, {hi!r})")
        ch = item.get("channels", 32)
        if not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= 1024:
            raise ModelError(f"{pre}model spec key '{key}.channels': an integer in 1..1024 "
                             f"(got {ch!r})")
        unit = item.get("unit", "m")
        if not isinstance(unit, str) or not 0 < len(unit) <= 8:
            raise ModelError(f"{pre}model spec key '{key}.unit': a short string (got {unit!r})")
        out.append(TaskSpec(name=name, kind="depth", unit=unit, min_depth=float(lo),
                            max_depth=float(hi), channels=ch))
    if len({t.name for t in out}) != len(out):
        raise ModelError(f"{pre}model spec key 'tasks': task names repeat")
    return tuple(out)


def task_names(spec) -> list[str]:
    """Output names of a spec's model (a ``ModelSpec``): ``["seg", ...extra tasks]`` for a
    multi-task model, ``["logits"]`` for a single-task one."""
    extra = spec.tasks or ()
    return [SEG, *(t.name for t in extra)] if extra else ["logits"]
