"""The model spec stored inside an ONNX file (``metadata_props["segcompress.spec"]``), so
a lone ``.onnx`` still describes itself. Written by the exporter, read by the runtime
and by bench; ``onnx`` is imported only when a file is read."""

from __future__ import annotations

import json
from typing import Any

SPEC_METADATA_KEY = "segcompress.spec"


def set_spec_metadata(proto, spec: dict[str, Any]) -> None:
    """Store ``spec`` as JSON in the model's ``metadata_props`` (replacing an old one)."""
    keep = [p for p in proto.metadata_props if p.key != SPEC_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = SPEC_METADATA_KEY, json.dumps(spec)


def spec_from_onnx(path_or_proto) -> dict[str, Any] | None:
    """The spec stored by :func:`set_spec_metadata` (an ``onnx.ModelProto`` or a path),
    or None."""
    import onnx

    proto = path_or_proto
    if not isinstance(proto, onnx.ModelProto):
        proto = onnx.load(str(path_or_proto), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == SPEC_METADATA_KEY:
            return json.loads(p.value)
    return None
