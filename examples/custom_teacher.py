"""A custom (non-smp) teacher: the contract a model needs for ``compress distill``.

Name it in a recipe: ``teacher.model.factory: examples.custom_teacher:build`` (the module
must be importable: run from the repository root or install your package).

The contract:

* ``build(classes: int, **kwargs) -> nn.Module``: the factory; ``classes`` comes from
  ``teacher.model.classes`` (or the checkpoint's spec), the rest from ``teacher.model.kwargs``.
* ``model(x) -> logits``: ``x`` is ``[N, 3, H, W]`` normalised with ``teacher.model.mean/std``
  (default ImageNet), ``logits`` is ``[N, classes, H, W]`` (one channel for a binary task).
* For feature KD (``kd.feature`` / ``kd.cwd.levels``), ``forward_taps(x) -> (logits,
  {level: tensor})`` with each requested level: ``stride4`` / ``stride8`` / ``stride16`` /
  ``stride32`` are ``[N, C_l, H / s, W / s]`` (the stride is checked before training),
  ``decoder`` is the last feature map before the head, any channels (1x1 adapters bridge
  them). A model without ``forward_taps`` can still teach response KD and CWD on logits.

Base + adapter (e.g. a LoRA fine-tune saved alone): build the model with its adapter
modules (here ``build(classes, lora_rank=4)`` adds a low-rank update of the head), give the
base weights as ``teacher.checkpoint`` and the adapter's tensors (``lora_a.weight``,
``lora_b.weight``) as ``teacher.adapter``; the adapter loads over the base, and any weight
neither file holds is refused unless ``teacher.allow_missing_keys=true``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinyTeacher(nn.Module):
    """Four stride-2 stages (strides 2..16), a top-down decoder and a 1x1 head."""

    def __init__(self, classes: int, width: int = 16, lora_rank: int = 0) -> None:
        super().__init__()
        w = width
        self.stages = nn.ModuleList([_block(3, w, 2), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2),
                                     _block(4 * w, 4 * w, 2)])
        self.fuse = _block(4 * w + 2 * w, 2 * w, 1)
        self.head = nn.Conv2d(2 * w, classes, 1)
        self.lora_a = nn.Conv2d(2 * w, lora_rank, 1, bias=False) if lora_rank else None
        self.lora_b = nn.Conv2d(lora_rank, classes, 1, bias=False) if lora_rank else None
        if self.lora_b is not None:  # a fresh adapter starts as no change
            nn.init.zeros_(self.lora_b.weight)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats, h = [], x
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        s4, s8, s16 = feats[1], feats[2], feats[3]
        up = F.interpolate(s8, size=s4.shape[-2:], mode="bilinear", align_corners=False)
        dec = self.fuse(torch.cat([up, s4], 1))
        head = self.head(dec)
        if self.lora_a is not None:
            head = head + self.lora_b(self.lora_a(dec))
        logits = F.interpolate(head, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, {"stride4": s4, "stride8": s8, "stride16": s16, "decoder": dec}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_taps(x)[0]


def build(classes: int, width: int = 16, lora_rank: int = 0) -> nn.Module:
    """The factory ``teacher.model.factory`` names (``lora_rank > 0``: with a LoRA head)."""
    return TinyTeacher(classes, width, lora_rank)
