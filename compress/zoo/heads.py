"""The project's own light decoders on timm ``features_only`` encoders.

Three heads, each a small ``nn.Module`` taking the encoder's stride-4/8/16/32 features and
returning ``(decoder feature, logits at the decoder's stride)``:

- :class:`SegFormerMLP`: SegFormer's all-MLP decoder (Xie et al. 2021): a per-pixel linear
  projection of every level to one width, upsampled to stride 4, concatenated, fused.
- :class:`LRASPP`: the Lite R-ASPP head of MobileNetV3 (Howard et al. 2019): a 1x1 branch
  gated by a global-pooled sigmoid on the deepest feature, plus a stride-8 classifier.
- :class:`PPLiteSeg`: PP-LiteSeg's decoder (Peng et al. 2022): simple pyramid pooling
  (SPPM) on the deepest feature, then a flexible decoder whose channels shrink towards
  high resolution, each step a unified attention fusion (UAFM, spatial attention).

:class:`ZooSegModel` puts an encoder and one head together; it maps ``[N, 3, H, W]`` to
``[N, C, H, W]`` logits and gives its features through ``forward_taps`` (the tap API of
:func:`compress.models.forward_with_features`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.encoder_weights import load_encoder_weights
from compress.spec import ModelSpec
from compress.zoo.registry import ZooError

ENCODER_STRIDES = (4, 8, 16, 32)

# timm generators that take a channel multiplier, with each variant's own multipliers
# (encoder_width scales the channel one); a fixed table, never a name read from a file.
_WIDTH_VARIANTS = {
    "efficientnet_lite0": ("efficientnet", "_gen_efficientnet_lite", 1.0, {"depth_multiplier": 1.0}),
    "efficientnet_lite1": ("efficientnet", "_gen_efficientnet_lite", 1.0, {"depth_multiplier": 1.1}),
    "efficientnet_lite2": ("efficientnet", "_gen_efficientnet_lite", 1.1, {"depth_multiplier": 1.2}),
    "mobilenetv4_conv_small": ("mobilenetv3", "_gen_mobilenet_v4", 1.0, {}),
    "mobilenetv4_conv_medium": ("mobilenetv3", "_gen_mobilenet_v4", 1.0, {}),
    "mobilenetv3_large_100": ("mobilenetv3", "_gen_mobilenet_v3", 1.0, {}),
}


def conv_bn_relu(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class TimmFeatures(nn.Module):
    """A timm ``features_only`` encoder giving the stride 4, 8, 16 and 32 features.

    ``self.model`` is the timm model (where :func:`compress.encoder_weights.load_encoder_weights`
    loads offline weights, as for smp's ``tu-`` encoders).
    """

    def __init__(self, encoder: str, width: float = 1.0, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        name = encoder.removeprefix("tu-")
        try:
            if width == 1.0:
                self.model = timm.create_model(name, features_only=True, pretrained=pretrained)
            else:
                self.model = _width_model(name, width, pretrained)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ZooError(f"cannot build encoder {encoder!r}: {e}") from None
        reductions = list(self.model.feature_info.reduction())
        missing = [s for s in ENCODER_STRIDES if s not in reductions]
        if missing:
            raise ZooError(f"encoder {encoder!r} gives features at strides {reductions}; the "
                           f"zoo heads need 4, 8, 16 and 32 (missing {missing})")
        self.keep = [reductions.index(s) for s in ENCODER_STRIDES]
        self.channels = [self.model.feature_info.channels()[i] for i in self.keep]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        return [feats[i] for i in self.keep]


def _width_model(name: str, width: float, pretrained: bool) -> nn.Module:
    if name not in _WIDTH_VARIANTS:
        raise ZooError(f"encoder_width is supported for {', '.join(_WIDTH_VARIANTS)}, not {name!r}")
    if pretrained:
        raise ZooError(f"no ImageNet weights for {name} at encoder_width {width}")
    from timm.models import efficientnet, mobilenetv3

    module, fn, base, extra = _WIDTH_VARIANTS[name]
    gen = getattr({"efficientnet": efficientnet, "mobilenetv3": mobilenetv3}[module], fn)
    return gen(name, channel_multiplier=base * width, pretrained=False, features_only=True,
               **extra)


class SegFormerMLP(nn.Module):
    """All-MLP decoder: 1x1 projections to ``embed``, upsample to stride 4, concat, fuse."""

    stride = 4

    def __init__(self, in_channels: list[int], classes: int, embed: int = 128) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, embed, 1) for c in in_channels)
        self.fuse = conv_bn_relu(embed * len(in_channels), embed, 1)
        self.classifier = nn.Conv2d(embed, classes, 1)
        self.channels = embed

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        top = feats[0]
        ups = [p(f) if i == 0 else _up(p(f), top) for i, (p, f) in enumerate(zip(self.proj, feats))]
        dec = self.fuse(torch.cat(ups[::-1], 1))
        return dec, self.classifier(dec)


class LRASPP(nn.Module):
    """Lite R-ASPP: ``cbr(f32) * sigmoid(conv(gap(f32)))``, upsampled to stride 8 and
    classified, plus a classifier on the stride-8 feature."""

    stride = 8

    def __init__(self, in_channels: list[int], classes: int, inter: int = 128) -> None:
        super().__init__()
        c8, c32 = in_channels[1], in_channels[3]
        self.cbr = conv_bn_relu(c32, inter, 1)
        self.scale = nn.Sequential(nn.Conv2d(c32, inter, 1), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(c8, classes, 1)
        self.high_classifier = nn.Conv2d(inter, classes, 1)
        self.channels = inter

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = feats[1], feats[3]
        x = self.cbr(high) * self.scale(high.mean((2, 3), keepdim=True))
        dec = _up(x, low)
        return dec, self.low_classifier(low) + self.high_classifier(dec)


class SPPM(nn.Module):
    """Simple pyramid pooling: global pooling and 2x2 / 4x4 average windows, each a 1x1
    conv, upsampled and summed, then one 3x3 conv. Fixed windows (not adaptive bins) so
    any input size exports to plain ONNX pooling."""

    def __init__(self, cin: int, inter: int, cout: int, windows: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        self.windows = windows
        self.stages = nn.ModuleList(conv_bn_relu(cin, inter, 1) for _ in range(len(windows) + 1))
        self.out = conv_bn_relu(inter, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _up(self.stages[0](x.mean((2, 3), keepdim=True)), x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        for k, stage in zip(self.windows, self.stages[1:]):
            k = (min(k, h), min(k, w))  # a window never larger than the map
            y = y + _up(stage(F.avg_pool2d(x, k, k, ceil_mode=True)), x)
        return self.out(y)


class UAFM(nn.Module):
    """Unified attention fusion (spatial): ``a = sigmoid(conv([mean, max] of up and low))``,
    ``out = conv(up * a + low * (1 - a))``."""

    def __init__(self, low_ch: int, high_ch: int, cout: int) -> None:
        super().__init__()
        self.low = conv_bn_relu(low_ch, high_ch, 3)
        self.attn = nn.Sequential(conv_bn_relu(4, 2, 3), nn.Conv2d(2, 1, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(1), nn.Sigmoid())
        self.out = conv_bn_relu(high_ch, cout, 3)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        up = _up(high, low)
        stats = torch.cat([up.mean(1, keepdim=True), up.amax(1, keepdim=True),
                           low.mean(1, keepdim=True), low.amax(1, keepdim=True)], 1)
        a = self.attn(stats)
        return self.out(up * a + low * (1 - a))


class PPLiteSeg(nn.Module):
    """SPPM on stride 32 (``channels[0]``), UAFM to stride 16 (``channels[1]``) and 8
    (``channels[2]``), a 3x3 + 1x1 segmentation head at stride 8."""

    stride = 8

    def __init__(self, in_channels: list[int], classes: int,
                 channels: tuple[int, int, int] = (128, 96, 64)) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ZooError(f"PPLiteSeg needs 3 decoder channels (stride 32, 16, 8), got {list(channels)}")
        d32, d16, d8 = channels
        self.sppm = SPPM(in_channels[3], d32, d32)
        self.fuse16 = UAFM(in_channels[2], d32, d16)
        self.fuse8 = UAFM(in_channels[1], d16, d8)
        self.head = nn.Sequential(conv_bn_relu(d8, d8, 3), nn.Conv2d(d8, classes, 1))
        self.channels = d8

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.sppm(feats[3])
        x = self.fuse16(feats[2], x)
        dec = self.fuse8(feats[1], x)
        return dec, self.head(dec)


HEADS: dict[str, type[nn.Module]] = {"SegFormerMLP": SegFormerMLP, "LRASPP": LRASPP,
                                     "PPLiteSeg": PPLiteSeg}
TAP_NAMES = ("stride4", "stride8", "stride16", "stride32")


class ZooSegModel(nn.Module):
    """Encoder + project head; logits upsampled (bilinear) to the input size.

    ``forward_taps(x)`` returns the logits and ``{stride4, stride8, stride16, stride32,
    decoder}`` features; ``tap_strides`` says each one's stride.
    """

    def __init__(self, encoder: TimmFeatures, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.tap_strides = {**dict(zip(TAP_NAMES, ENCODER_STRIDES)), "decoder": decoder.stride}

    def _run(self, x: torch.Tensor):
        feats = self.encoder(x)
        dec, logits = self.decoder(feats)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, feats, dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, feats, dec = self._run(x)
        return logits, {**dict(zip(TAP_NAMES, feats)), "decoder": dec}


def create_head_model(spec: ModelSpec, encoder_weights: str | None = None) -> ZooSegModel:
    """Build a project-head model from a spec (``arch`` in :data:`HEADS`).

    ``spec.decoder_channels`` gives the head widths (one for SegFormerMLP / LRASPP,
    three for PPLiteSeg); ``spec.kwargs`` may hold ``encoder_width`` (channel
    multiplier of the encoder, random init only).

    Raises:
        ZooError: unknown head, unknown kwargs, an encoder without stride 4-32 features.
    """
    arch = spec.arch
    if arch not in HEADS:
        raise ZooError(f"unknown zoo head {arch!r}; valid: {', '.join(HEADS)}")
    kwargs = dict(spec.kwargs)
    width = float(kwargs.pop("encoder_width", 1.0))
    if kwargs:
        raise ZooError(f"{arch}: unknown kwargs {sorted(kwargs)} (valid: encoder_width)")
    encoder = TimmFeatures(spec.encoder, width, pretrained=encoder_weights == "imagenet")
    widths = spec.decoder_channels
    head_cls = HEADS[arch]
    if widths:
        arg = tuple(widths) if head_cls is PPLiteSeg else int(widths[0])
        decoder = head_cls(encoder.channels, spec.classes, arg)
    else:
        decoder = head_cls(encoder.channels, spec.classes)
    model = ZooSegModel(encoder, decoder)
    if encoder_weights not in (None, "imagenet"):
        load_encoder_weights(model, spec.encoder, encoder_weights)
    return model
