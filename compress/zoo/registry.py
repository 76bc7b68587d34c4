"""The student zoo: named students, each a fixed model spec (architecture, encoder, widths).

Light on purpose (no torch import): ``compress.config`` resolves ``model.student`` here.
A zoo name only ever maps to an entry of :data:`STUDENTS`; nothing a checkpoint or a
config names is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compress.errors import UserError


class ZooError(UserError, ValueError):
    """An unknown student name or a zoo entry that cannot be built (named)."""


@dataclass(frozen=True)
class StudentEntry:
    """One zoo student.

    ``arch`` is an smp architecture (``Unet``, ``FPN``, ``DeepLabV3Plus``, ``Linknet``) or
    one of the project's heads (``SegFormerMLP``, ``LRASPP``, ``PPLiteSeg``, see
    :mod:`compress.zoo.heads`). ``weights`` is the default ``model.encoder_weights``:
    ``"local"`` where offline ImageNet weights ship with the install, else None (random
    init without internet; ``imagenet`` downloads them where there is internet).
    """

    name: str
    arch: str
    encoder: str
    about: str
    decoder_channels: tuple[int, ...] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    def model_fields(self) -> dict[str, Any]:
        """The ``model.*`` keys this student sets (arch, encoder, decoder_channels, kwargs)."""
        return {
            "arch": self.arch,
            "encoder": self.encoder,
            "decoder_channels": list(self.decoder_channels) if self.decoder_channels else None,
            "kwargs": dict(self.kwargs),
        }


LITE0, LITE1 = "tu-efficientnet_lite0", "tu-efficientnet_lite1"
MNV4S = "tu-mobilenetv4_conv_small"

_ENTRIES = [
    StudentEntry("unet-lite0", "Unet", LITE0,
                 "UNet on EfficientNet-Lite0, slim decoder (128,64,32,16,16): today's student",
                 (128, 64, 32, 16, 16), weights="local"),
    StudentEntry("unet-lite1", "Unet", LITE1, "the same slim UNet on EfficientNet-Lite1",
                 (128, 64, 32, 16, 16), weights="local"),
    StudentEntry("fpn-lite0", "FPN", LITE0,
                 "smp FPN, pyramid 64 / segmentation 32 channels (smp default 256 / 128)",
                 kwargs={"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32},
                 weights="local"),
    StudentEntry("deeplabv3plus-lite0", "DeepLabV3Plus", LITE0,
                 "smp DeepLabV3+, 64 decoder channels (smp default 256), output stride 16",
                 kwargs={"decoder_channels": 64}, weights="local"),
    StudentEntry("linknet-lite0", "Linknet", LITE0,
                 "smp Linknet (decoder widths follow the encoder's, a quarter in the middle)",
                 weights="local"),
    StudentEntry("segformer-lite0", "SegFormerMLP", LITE0,
                 "SegFormer-style all-MLP decoder (embed 128) on EfficientNet-Lite0",
                 (128,), weights="local"),
    StudentEntry("segformer-lite0-w64", "SegFormerMLP", LITE0,
                 "the all-MLP decoder at half width (embed 64)", (64,), weights="local"),
    StudentEntry("lraspp-lite0", "LRASPP", LITE0,
                 "LR-ASPP head (MobileNetV3 paper), 128 channels, on EfficientNet-Lite0",
                 (128,), weights="local"),
    StudentEntry("ppliteseg-lite0", "PPLiteSeg", LITE0,
                 "PP-LiteSeg-style decoder: SPPM 128, flexible decoder (128, 96, 64), UAFM",
                 (128, 96, 64), weights="local"),
    StudentEntry("ppliteseg-lite1", "PPLiteSeg", LITE1,
                 "the PP-LiteSeg-style decoder on EfficientNet-Lite1", (128, 96, 64),
                 weights="local"),
    StudentEntry("ppliteseg-lite0-e075", "PPLiteSeg", LITE0,
                 "PP-LiteSeg-style, encoder width x0.75, decoder (96, 64, 48): random init",
                 (96, 64, 48), {"encoder_width": 0.75}),
    StudentEntry("segformer-mnv4s", "SegFormerMLP", MNV4S,
                 "all-MLP decoder (embed 64) on MobileNetV4-Conv-Small", (64,)),
    StudentEntry("lraspp-mnv4s", "LRASPP", MNV4S,
                 "LR-ASPP head (128) on MobileNetV4-Conv-Small", (128,)),
    StudentEntry("ppliteseg-mnv4s-050", "PPLiteSeg", "tu-mobilenetv4_conv_small_050",
                 "PP-LiteSeg-style (64, 48, 32) on MobileNetV4-Conv-Small x0.5", (64, 48, 32)),
    StudentEntry("segformer-efficientvit-b0", "SegFormerMLP", "tu-efficientvit_b0",
                 "all-MLP decoder (embed 64) on EfficientViT-B0 (MIT)", (64,)),
    StudentEntry("ppliteseg-repvit-m0_9", "PPLiteSeg", "tu-repvit_m0_9",
                 "PP-LiteSeg-style (96, 64, 48) on RepViT-M0.9", (96, 64, 48)),
    StudentEntry("lraspp-mobileone-s0", "LRASPP", "tu-mobileone_s0",
                 "LR-ASPP head (128) on MobileOne-S0 (train-time branches, not reparameterised)",
                 (128,)),
]

STUDENTS: dict[str, StudentEntry] = {e.name: e for e in _ENTRIES}


def student_names() -> list[str]:
    """Zoo names, in the zoo's order."""
    return list(STUDENTS)


def get_student(name: str) -> StudentEntry:
    """The zoo entry called ``name``.

    Raises:
        ZooError: unknown name (the message lists the valid ones).
    """
    if name not in STUDENTS:
        raise ZooError(f"unknown student {name!r}; the zoo has: {', '.join(STUDENTS)}")
    return STUDENTS[name]
