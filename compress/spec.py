"""The model spec: everything needed to rebuild or interpret a model, as one typed object.

A :class:`ModelSpec` (architecture, encoder, classes and their names, ignore index,
normalisation, input size, and the optional parts: decoder widths, a factory, extra
constructor kwargs, pruned tensor shapes, an exported model's output) travels through
compress, deploy and bench as an object; it becomes a plain dict only where it is written
(checkpoint, ONNX metadata, OpenVINO rt_info, manifest) with :meth:`ModelSpec.to_dict`,
and is read back, checked, with :meth:`ModelSpec.from_dict`. The dict keeps the keys the
files have always had, so every checkpoint and export written before still loads.

This module imports no torch (it checks ``pruned_shapes`` itself, without
:mod:`compress.prune`), so reading a manifest or ONNX metadata stays light.
:func:`make_spec` (a spec with its defaults filled) lives here too, so the zoo and the
factory both build specs without importing each other.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import ModelError
from compress.io import NESTING_LIMIT
from compress.tasks import TaskSpec, parse_tasks

SPEC_NODE_LIMIT = 100_000
# the one bound on an image or input side, checked before anything is allocated (a spec's
# input_size, --size): 8192x8192 float32 logits of 11 classes are already 3 GiB
MAX_SIDE = 8192
OUTPUTS = ("logits", "argmax")
MAX_PRUNED_TENSORS = 20_000
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
# keys written only when set: an unpruned model has no pruned_shapes, a checkpoint no output
_OPTIONAL_KEYS = ("pruned_shapes", "output", "tasks", "frame_size")


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild and interpret a model (like timm's ``PretrainedCfg``). Frozen: build
    a changed one with ``dataclasses.replace(spec, ...)`` (which checks it again).

    Fields hold the same plain values as the dict in files (lists, not tuples), so
    ``spec.x`` compares exactly as ``spec["x"]`` did; treat them as read-only.

    Attributes:
        arch: smp architecture name (``Unet``, ``FPN``...) or a zoo head (``SegFormerMLP``...).
        encoder: smp / timm encoder name (``tu-efficientnet_lite0``...).
        classes: output channels (1 for a binary task).
        class_names: ``classes`` names.
        ignore_index: the label value that is not scored.
        mean, std: the 3 per-channel values images are normalised with.
        input_size: ``[H, W]`` the model was trained or exported at.
        decoder_channels: decoder / head widths, or None for the architecture's default.
        factory: ``package.module:function`` building a custom model, or None.
        kwargs: extra constructor arguments.
        pruned_shapes: ``{tensor name: shape}`` from ``compress prune``, or None.
        output: an exported model's output, ``"logits"`` or ``"argmax"``; None for a
            checkpoint (logits).
        tasks: extra tasks beside segmentation (:class:`compress.tasks.TaskSpec`: a depth
            head...), parsed once here from the list of mappings files hold (which
            :meth:`to_dict` writes back); None for a single-task model.
        frame_size: ``[H, W]`` of a frame-to-map export (``compress export --e2e``): it
            takes camera frames, uint8 ``[N, H, W, 3]`` RGB of this size, and gives uint8
            class ids ``[N, H, W]`` at that size (resize to ``input_size``, normalisation,
            argmax and the resize back are in the graph; ``output`` is ``"argmax"``); None
            for every other model.
    """

    arch: str
    encoder: str
    classes: int
    class_names: list[str]
    ignore_index: int
    mean: list[float]
    std: list[float]
    input_size: list[int]
    decoder_channels: list[int] | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    pruned_shapes: dict[str, list[int]] | None = None
    output: str | None = None
    tasks: tuple[TaskSpec, ...] | None = None
    frame_size: list[int] | None = None

    def __post_init__(self) -> None:
        validate_spec(self.to_dict())
        # copies: the caller's lists and dicts are not shared with this spec
        for name in ("class_names", "mean", "std", "input_size"):
            object.__setattr__(self, name, list(getattr(self, name)))
        if self.decoder_channels is not None:
            object.__setattr__(self, "decoder_channels", list(self.decoder_channels))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        if self.frame_size is not None:
            object.__setattr__(self, "frame_size", list(self.frame_size))
        if self.pruned_shapes is not None:
            object.__setattr__(self, "pruned_shapes",
                               {k: list(v) for k, v in self.pruned_shapes.items()})
        if self.tasks is not None:  # checked by validate_spec above
            object.__setattr__(self, "tasks", parse_tasks(_plain(self.tasks)))

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> ModelSpec:
        """Check a spec read from a file and make it a :class:`ModelSpec`.

        Args:
            data: the dict a checkpoint, manifest, ONNX metadata or rt_info holds.
            source: the file it came from, named in errors.

        Raises:
            ModelError: one line naming ``source`` and the key (a missing, unknown or
                malformed key, a spec that is not a mapping or is too large).
        """
        data = validate_spec(data, source)
        unknown = [k for k in data if k not in _FIELDS]
        if unknown:
            where = f"{source}: " if source else ""
            raise ModelError(f"{where}model spec key {str(unknown[0])[:60]!r} is unknown "
                             f"(known: {', '.join(_FIELDS)})")
        return cls(**{k: data[k] for k in _FIELDS if k in data})

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written to files (the keys checkpoints have always had;
        ``pruned_shapes`` and ``output`` only when set)."""
        out = {f: _plain(getattr(self, f)) for f in _FIELDS}
        for key in _OPTIONAL_KEYS:
            if out[key] is None:
                del out[key]
        return out


def model_label(spec: ModelSpec) -> str:
    """How a model is named to the user: its factory when it has one, else arch/encoder."""
    return f"factory {spec.factory}" if spec.factory else f"{spec.arch}/{spec.encoder}"


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec))


def _plain(value: Any) -> Any:
    """A copy of ``value`` in the types files hold (lists and dicts)."""
    if isinstance(value, TaskSpec):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _count_nodes(obj, limit: int) -> tuple[int, int]:
    """Nodes in a nested list/dict structure and its nesting depth, counting shared
    references each time they appear, stopping past ``limit`` nodes (a pickle can share
    one list a billion times) or :data:`~compress.io.NESTING_LIMIT` levels."""
    count, depth, stack = 0, 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        count, depth = count + 1, max(depth, level)
        if count > limit or depth > NESTING_LIMIT:
            break
        if isinstance(node, dict):
            stack.extend((k, level + 1) for k in node)
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend((v, level + 1) for v in node)
    return count, depth


def pruned_shapes_error(value: Any) -> str | None:
    """Why a spec's ``pruned_shapes`` is malformed (types and sizes), or None when fine.

    A valid value is null or ``{tensor name: [d0, d1, ...]}`` with dotted-identifier
    names, 1 to 5 dims each, every dim an integer in 1..65536.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"a mapping of tensor name -> shape (got {type(value).__name__})"
    if len(value) > MAX_PRUNED_TENSORS:
        return f"at most {MAX_PRUNED_TENSORS} tensors (got {len(value)})"
    for name, shape in value.items():
        if not isinstance(name, str) or len(name) > 300 or not _TENSOR_NAME.match(name):
            return f"keyed by dotted tensor names (got {str(name)[:60]!r})"
        if not (isinstance(shape, (list, tuple)) and 1 <= len(shape) <= 5 and all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65_536
                for d in shape)):
            return f"1 to 5 positive integers per tensor ({name}: {str(shape)[:60]})"
    return None


def validate_spec(spec: Any, source: str | Path | None = None) -> dict[str, Any]:
    """Check a model spec dict's types and ranges before anything uses it (specs come
    from files: checkpoints and manifests). Returns the dict; raises one line naming the
    file and the key. :meth:`ModelSpec.from_dict` is the way in; this is its check."""
    where = f"{source}: " if source else ""

    def bad(key: str, want: str, got: Any = None) -> ModelError:
        if key not in spec:
            return ModelError(f"{where}model spec key {key!r} is missing (it must be {want})")
        shown = "" if got is None else f" (got {type(got).__name__} {str(got)[:60]!r})"
        return ModelError(f"{where}model spec key {key!r} must be {want}{shown}")

    if not isinstance(spec, dict):
        raise ModelError(f"{where}model spec must be a mapping, not {type(spec).__name__}")
    nodes, depth = _count_nodes(spec, SPEC_NODE_LIMIT)
    if nodes > SPEC_NODE_LIMIT:
        raise ModelError(f"{where}model spec is larger than {SPEC_NODE_LIMIT} values: refused")
    if depth > NESTING_LIMIT:
        raise ModelError(f"{where}model spec is nested deeper than {NESTING_LIMIT} levels: "
                         "refused")
    for key in ("arch", "encoder"):
        if not isinstance(spec.get(key), str) or len(spec[key]) > 200:
            raise bad(key, "a name (string)", spec.get(key))
    classes = spec.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 100_000:
        raise bad("classes", "an integer >= 1", classes)
    names = spec.get("class_names")
    if not isinstance(names, (list, tuple)) or len(names) != classes or not all(
            isinstance(n, str) and len(n) <= 200 for n in names):
        raise bad("class_names", f"a list of {classes} names", None if isinstance(
            names, (list, tuple)) else names)
    if isinstance(spec.get("ignore_index"), bool) or not isinstance(spec.get("ignore_index"), int):
        raise bad("ignore_index", "an integer", spec.get("ignore_index"))
    dec = spec.get("decoder_channels")
    if dec is not None and not (isinstance(dec, (list, tuple)) and all(
            isinstance(c, int) and 0 < c <= 65_536 for c in dec)):
        raise bad("decoder_channels", "a list of positive integers or null")
    fac = spec.get("factory")
    if fac is not None and not isinstance(fac, str):
        raise bad("factory", "a string package.module:function or null", fac)
    if not isinstance(spec.get("kwargs", {}), dict):
        raise bad("kwargs", "a mapping", spec.get("kwargs"))
    for key in ("mean", "std"):
        v = spec.get(key)
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
            raise bad(key, "3 finite numbers")
    if not all(x > 0 for x in spec["std"]):
        raise bad("std", "3 positive numbers")
    size = spec.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 < x for x in size)):
        raise bad("input_size", "[H, W], two positive integers")
    if max(size) > MAX_SIDE:
        raise bad("input_size", f"at most {MAX_SIDE} pixels a side", list(size))
    out = spec.get("output")
    if out is not None and out not in OUTPUTS:
        raise bad("output", "'logits', 'argmax' or null", out)
    frame = spec.get("frame_size")
    if frame is not None:
        if not (isinstance(frame, (list, tuple)) and len(frame) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_SIDE
                for x in frame)):
            raise bad("frame_size", f"[H, W], two integers in 1..{MAX_SIDE}, or null", frame)
        if out != "argmax":
            raise bad("output", "'argmax' where frame_size is set (a frame-to-map graph "
                      "gives class ids)", out)
    if spec.get("pruned_shapes") is not None:
        why = pruned_shapes_error(spec.get("pruned_shapes"))
        if why:
            raise ModelError(f"{where}model spec key 'pruned_shapes' must be {why}")
    if spec.get("tasks") is not None:
        parse_tasks(spec["tasks"], str(source) if source else "")
    return spec


# ---------------------------------------------------------------- building a spec

# ImageNet normalisation: the default for an encoder timm has no config for
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_normalization(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the encoder's pretrained weights expect (timm's config for ``tu-``)."""
    if encoder.startswith("tu-"):
        import timm

        try:
            cfg = timm.get_pretrained_cfg(encoder[3:])
            if cfg is not None:
                return tuple(cfg.mean), tuple(cfg.std)
        except Exception:  # noqa: BLE001, S110 - unknown to timm's table: ImageNet default
            pass
    return IMAGENET_MEAN, IMAGENET_STD


def make_spec(
    *,
    arch: str,
    encoder: str,
    classes: int,
    class_names: list[str] | None = None,
    ignore_index: int = 255,
    decoder_channels: list[int] | None = None,
    factory: str | None = None,
    kwargs: dict[str, Any] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    input_size: tuple[int, int] = (128, 128),
) -> ModelSpec:
    """Build a model spec, filling the defaults: class names ``class_<i>``, the encoder's
    normalisation (:func:`default_normalization`).

    Raises:
        ModelError: a value the spec cannot hold (names the key).
    """
    dmean, dstd = default_normalization(encoder)
    return ModelSpec(
        arch=arch,
        encoder=encoder,
        classes=int(classes),
        class_names=list(class_names) if class_names else [f"class_{i}" for i in range(classes)],
        ignore_index=int(ignore_index),
        decoder_channels=list(decoder_channels) if decoder_channels else None,
        factory=factory,
        kwargs=dict(kwargs or {}),
        mean=[float(v) for v in (mean or dmean)],
        std=[float(v) for v in (std or dstd)],
        input_size=[int(input_size[0]), int(input_size[1])],
    )
