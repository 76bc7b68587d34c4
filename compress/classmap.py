"""Teacher-to-student class maps: one format, by class names, for KD and pseudo-labels.

Each teacher class goes to one student class, is split over several with fractions that
sum to 1, or is left out with ``ignore`` (or ``null``)::

    Tree: Forest
    Rangeland: {Grassland: 0.7, SemiNatural: 0.3}
    Water: ignore

``kd.class_map`` takes such a mapping inline (the student's classes are the run's) or the
path of a YAML file holding it. ``compress pseudo-label --class-map FILE`` takes a file
that also names the output classes in order (a KD recipe may point at the same file; its
``classes`` must then be the student's)::

    classes: [Background, Forest, Grassland, Cropland, Settlement, SemiNatural]
    map: {Tree: Forest, Rangeland: {Grassland: 0.7, SemiNatural: 0.3}, Water: ignore, ...}

A ``[teacher][student]`` matrix whose rows sum to 1 is still accepted where the student's
classes are known. :func:`parse_class_map` is the one parser of all these forms.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import torch

from compress.config import ConfigError
from compress.io import read_text, safe_yaml

IGNORE = "ignore"


def parse_class_map(raw: Any, teacher_names: list[str], student_names: list[str] | None = None,
                    source: str = "kd.class_map") -> tuple[list[str], torch.Tensor]:
    """Turn a class map (by names, a file path, or a matrix) into a ``[Ct, Cs]`` matrix.

    Args:
        raw: a mapping teacher name -> student name / ``{student name: fraction}`` /
            ``ignore`` / None; the same under ``map:`` beside ``classes:``; the path of a
            YAML file holding either; or a ``[Ct][Cs]`` list of lists.
        teacher_names: the teacher's classes, in its order.
        student_names: the student's classes; None: the map's own ``classes`` list.
        source: what errors name (the key, or the file when ``raw`` is a path).

    Returns:
        ``(student class names, matrix [Ct, Cs])``: each row sums to 1, or is all zeros
        for a teacher class mapped to ``ignore``.

    Raises:
        ValueError: one line naming ``source`` (or the file) and the bad class name, with
            "did you mean" when a name is close to a real one.
    """
    if isinstance(raw, str | Path):
        return parse_class_map(_read(Path(raw)), teacher_names, student_names, str(raw))
    if isinstance(raw, dict) and "map" in raw and set(raw) <= {"classes", "map"}:
        student_names = _student_classes(raw.get("classes"), student_names, source)
        raw = raw["map"]
    if student_names is None:
        raise ConfigError(f"{source}: name the output classes in order ('classes: [...]' beside "
                         "'map: {teacher class: student class, ...}')")
    t_names, s_names = [str(n) for n in teacher_names], [str(n) for n in student_names]
    if isinstance(raw, list):
        return s_names, _matrix(raw, len(t_names), len(s_names), source)
    if isinstance(raw, dict):
        return s_names, _named({str(k): v for k, v in raw.items()}, t_names, s_names, source)
    raise ConfigError(f"{source}: expected a mapping teacher class -> student class, got a "
                     f"{type(raw).__name__}")


def map_classes(probs: torch.Tensor, class_map: torch.Tensor | None, *,
                renormalise: bool = True) -> torch.Tensor:
    """Teacher probabilities ``[N, Ct, H, W]`` (or ``[Ct, H, W]``) onto the student's label
    set with a ``[Ct, Cs]`` matrix whose rows sum to 1 (hard: one-hot rows; soft: splits)
    or are all zero (a teacher class mapped to ``ignore``: its probability is dropped and,
    with ``renormalise``, the rest renormalised). The one place a class map is applied
    (KD losses and pseudo-labels)."""
    if class_map is None:
        return probs
    batched = probs.ndim == 4
    x = probs if batched else probs[None]
    mapped = torch.einsum("nthw,ts->nshw", x, class_map.to(x.dtype))
    if renormalise:
        mapped = mapped / mapped.sum(1, keepdim=True).clamp_min(1e-12)
    return mapped if batched else mapped[0]


def kd_class_map(raw: Any, teacher_names: list[str], student_names: list[str]) -> torch.Tensor | None:
    """``kd.class_map`` as a ``[Ct, Cs]`` matrix; None (identity) when it is not set.

    Raises:
        ValueError: a bad map (see :func:`parse_class_map`), or different class counts
            without one.
    """
    if raw is None:
        if len(teacher_names) != len(student_names):
            raise ConfigError(f"teacher has {len(teacher_names)} classes and student "
                             f"{len(student_names)}: give kd.class_map (teacher class name -> "
                             "student class name, see configs/class_map_example.yaml)")
        return None
    return parse_class_map(raw, teacher_names, student_names)[1]


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: class map file not found")
    try:
        raw = safe_yaml(read_text(path))
    except Exception as e:  # noqa: BLE001 - bad YAML, aliases, not UTF-8: one line naming it
        raise ConfigError(f"{path}: cannot read the class map ({' '.join(str(e).split())})") from None
    if raw is None or isinstance(raw, str):
        raise ConfigError(f"{path}: expected a mapping teacher class -> student class")
    return raw


def _student_classes(given: Any, student_names: list[str] | None, source: str) -> list[str] | None:
    if given is None:
        return student_names
    if not isinstance(given, list) or not given or len(set(map(str, given))) != len(given):
        raise ConfigError(f"{source}: 'classes' must list the output class names once each, in order")
    given = [str(c) for c in given]
    if student_names is not None and given != list(student_names):
        raise ConfigError(f"{source}: 'classes' {given} differ from the student's "
                         f"{list(student_names)}")
    return given


def _matrix(rows: list, teacher_classes: int, student_classes: int, source: str) -> torch.Tensor:
    try:
        m = torch.tensor(rows, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: a matrix must be a list of equal-length rows of numbers") from None
    if m.shape != (teacher_classes, student_classes):
        raise ConfigError(f"{source} has shape {list(m.shape)}, expected "
                         f"[{teacher_classes}, {student_classes}] ([teacher][student])")
    if (m < 0).any() or not torch.allclose(m.sum(1), torch.ones(teacher_classes), atol=1e-4):
        raise ConfigError(f"{source} rows must be non-negative and sum to 1")
    return m


def _named(mapping: dict[str, Any], t_names: list[str], s_names: list[str], source: str) -> torch.Tensor:
    unknown = [k for k in mapping if k not in t_names]
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]!r} is not a teacher class{_near(unknown[0], t_names)}")
    missing = [t for t in t_names if t not in mapping]
    if missing:
        raise ConfigError(f"{source}: teacher classes not mapped: {', '.join(missing)} (map each "
                         f"to a student class, or to {IGNORE})")
    m = torch.tensor([_row(mapping[t], s_names, f"{source}: {t}") for t in t_names])
    if not m.any():
        raise ConfigError(f"{source}: every teacher class is mapped to {IGNORE}")
    return m


def _row(target: Any, s_names: list[str], where: str) -> list[float]:
    """One teacher class's row: its share of each student class."""
    if target is None or (target == IGNORE and IGNORE not in s_names):
        return [0.0] * len(s_names)
    split = {target: 1.0} if isinstance(target, str) else target
    if not isinstance(split, dict) or not split:
        raise ConfigError(f"{where}: expected a student class, {{student class: fraction, ...}} "
                         f"or {IGNORE}, got {target!r}")
    row = [0.0] * len(s_names)
    for name, frac in split.items():
        if str(name) not in s_names:
            raise ConfigError(f"{where}: {name!r} is not a student class{_near(str(name), s_names)}")
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not (
                math.isfinite(frac) and frac > 0):
            raise ConfigError(f"{where}: fraction {frac!r} for {name!r} must be a number > 0")
        row[s_names.index(str(name))] = float(frac)
    if abs(sum(row) - 1) > 1e-4:
        raise ConfigError(f"{where}: fractions sum to {sum(row):.4g}, not 1")
    return row


def _near(name: str, choices: list[str]) -> str:
    """" (did you mean 'X'?)" for a misspelt class name, else the valid names."""
    folded = {c.lower(): c for c in choices}
    near = [folded[name.lower()]] if name.lower() in folded else difflib.get_close_matches(
        name, choices, n=1, cutoff=0.6)
    if near:
        return f" (did you mean {near[0]!r}?)"
    return f" (classes: {', '.join(choices)})"
