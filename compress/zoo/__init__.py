"""The student zoo: named students (``model.student: NAME``) and the project's own heads.

``STUDENTS`` maps each name to a fixed model spec; smp architectures build through smp,
the project's heads (``SegFormerMLP``, ``LRASPP``, ``PPLiteSeg``) through
:func:`create_head_model`. A zoo checkpoint stores its resolved spec, so ``load_model``
rebuilds it from this fixed registry; nothing named in a file is imported.
"""

from __future__ import annotations

from typing import Any

from compress.spec import ModelSpec, make_spec
from compress.zoo.registry import STUDENTS, StudentEntry, ZooError, get_student, student_names

HEAD_ARCHS = ("SegFormerMLP", "LRASPP", "PPLiteSeg")
# stride of the "decoder" tap for each architecture of the zoo
DECODER_STRIDES = {"Unet": 1, "FPN": 4, "DeepLabV3Plus": 4, "Linknet": 1,
                   "SegFormerMLP": 4, "LRASPP": 8, "PPLiteSeg": 8}


def student_spec(name: str, classes: int, **spec_args: Any) -> ModelSpec:
    """The model spec of zoo student ``name`` (``spec_args`` go to ``make_spec``:
    class_names, ignore_index, mean, std, input_size)."""
    return make_spec(classes=classes, **get_student(name).model_fields(), **spec_args)


def declared_taps(spec: ModelSpec) -> dict[str, int]:
    """Feature levels a zoo model taps for KD and the stride of each.

    DeepLabV3+ keeps stride 16 at its deepest stage (dilated), so it has no ``stride32``.
    """
    taps = {"stride4": 4, "stride8": 8, "stride16": 16, "stride32": 32}
    if spec.arch == "DeepLabV3Plus":
        del taps["stride32"]
    if spec.arch in DECODER_STRIDES:
        taps["decoder"] = DECODER_STRIDES[spec.arch]
    return taps


def create_head_model(spec: ModelSpec, encoder_weights: str | None = None):
    """Build a model whose ``arch`` is one of :data:`HEAD_ARCHS` (see :mod:`compress.zoo.heads`)."""
    from compress.zoo.heads import create_head_model as _create

    return _create(spec, encoder_weights)


__all__ = ["DECODER_STRIDES", "HEAD_ARCHS", "STUDENTS", "StudentEntry", "ZooError",
           "create_head_model", "declared_taps", "get_student", "student_names", "student_spec"]
