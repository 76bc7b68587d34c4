"""The model spec stored inside an ONNX file (``metadata_props["segcompress.spec"]``), so
a lone ``.onnx`` still describes itself. Written by the exporter, read by the runtime
and by bench; ``onnx`` is imported only when a file is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.spec import ModelSpec
from compress.tasks import task_names

SPEC_METADATA_KEY = "segcompress.spec"


def set_spec_metadata(proto, spec: ModelSpec) -> None:
    """Store ``spec`` as JSON in the model's ``metadata_props`` (replacing an old one)."""
    keep = [p for p in proto.metadata_props if p.key != SPEC_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_METADATA_KEY, json.dumps(spec.to_dict())


def spec_from_onnx(path_or_proto, source: str | Path | None = None) -> ModelSpec | None:
    """The spec stored by :func:`set_spec_metadata` (an ``onnx.ModelProto`` or a path),
    checked, or None. ``source`` names the file in errors (default: the path given).

    Raises:
        ModelError: a malformed spec (names the file and key).
    """
    import onnx

    proto = path_or_proto
    if not isinstance(proto, onnx.ModelProto):
        source = source or path_or_proto
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == SPEC_METADATA_KEY:
            return ModelSpec.from_dict(json.loads(p.value), source)
    return None


# ---------------------------------------------------------------- named outputs

SINGLE_OUTPUT_NAMES = {"logits": "logits", "argmax": "classes"}  # single-task graphs


def output_names(spec: ModelSpec) -> list[str]:
    """The names of a model's outputs, in graph order, segmentation first.

    A single-task model has one: ``logits`` (``[N, C, H, W]``), or ``classes`` (int64
    ``[N, H, W]``) when ``spec.output == "argmax"``. A multi-task model (``spec.tasks``)
    has ``seg`` (logits, or class ids with argmax) and one per extra task (``depth``:
    float32 ``[N, H, W]`` in the task's unit): :func:`compress.tasks.task_names`.
    """
    names = task_names(spec)
    return names if len(names) > 1 else [SINGLE_OUTPUT_NAMES[spec.output or "logits"]]


def is_multi_output(spec: ModelSpec) -> bool:
    """Whether the spec's model has more than one named output (a multi-task model)."""
    return bool(spec.tasks)


def output_info(spec: ModelSpec, input_shape: list) -> list[dict[str, Any]]:
    """What a manifest says of each output: ``name``, ``kind`` (``segmentation`` or the
    task's kind), ``shape`` (symbolic dims as in ``input_shape``), ``dtype``, and for a
    dense task its ``unit`` and ``range`` ``[min, max]``."""
    n, _, h, w = input_shape
    argmax = spec.output == "argmax"
    seg = {"name": output_names(spec)[0], "kind": "segmentation",
           "shape": [n, h, w] if argmax else [n, spec.classes, h, w],
           "dtype": "int64" if argmax else "float32",
           "content": "class ids" if argmax else "logits"}
    return [seg, *({"name": t.name, "kind": t.kind, "shape": [n, h, w], "dtype": "float32",
                    "unit": t.unit, "range": [t.min_depth, t.max_depth]}
                   for t in spec.tasks or ())]
