"""The model spec stored inside an ONNX file (``metadata_props["segcompress.spec"]``), so
a lone ``.onnx`` still describes itself. Written by the exporter, read by the runtime
and by bench; ``onnx`` is imported only when a file is read."""

from __future__ import annotations

import json
from pathlib import Path

from compress.spec import ModelSpec

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
