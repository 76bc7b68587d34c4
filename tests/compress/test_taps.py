"""Feature taps cannot drift from the model: ``forward_with_features`` re-runs smp's
encoder -> decoder -> head (or a zoo head's ``forward_taps``), so its logits must equal
``model(x)`` on the same input for every architecture a spec may name. A new smp release
that changes its forward fails here, not silently in feature KD."""

from __future__ import annotations

import pytest
import torch

from compress.models import LEVEL_STRIDES, architectures, create_model, forward_with_features
from compress.zoo import HEAD_ARCHS
from tests.conftest import tiny_spec

SIZE = (64, 96)  # not square, so a swapped height/width shows
# smp architectures that need an encoder family of their own (DPT: a ViT)
ENCODER = {"DPT": "tu-vit_tiny_patch16_224"}
# PAN pools its stride-32 map by 2, 4 and 8 more: 256 px is the smallest input
SIZES = {"PAN": (256, 256)}
SKIP = {"DPT": "needs a ViT encoder at its pretraining size; no zoo entry or recipe uses it"}


@pytest.mark.parametrize("arch", sorted([*architectures(), *HEAD_ARCHS]))
def test_taps_give_the_models_own_logits(arch):
    if arch in SKIP:
        pytest.skip(SKIP[arch])
    torch.manual_seed(0)
    channels = None if arch not in HEAD_ARCHS else {"SegFormerMLP": [32], "LRASPP": [32],
                                                     "PPLiteSeg": [32, 24, 16]}[arch]
    size = SIZES.get(arch, SIZE)
    spec = tiny_spec(classes=3, size=size, arch=arch, decoder_channels=channels,
                     encoder=ENCODER.get(arch, "tu-efficientnet_lite0"))
    model = create_model(spec).eval()
    x = torch.randn(2, 3, *size)
    levels = ["stride4", "stride8", "decoder"]
    with torch.no_grad():
        plain = model(x)
        logits, feats = forward_with_features(model, x, levels)
    torch.testing.assert_close(logits, plain, rtol=0, atol=0)
    assert set(feats) == set(levels)
    for level in ("stride4", "stride8"):
        s = LEVEL_STRIDES[level]
        assert tuple(feats[level].shape[-2:]) == (size[0] // s, size[1] // s), level


def test_installed_smp_is_within_the_pinned_range():
    """pyproject.toml pins smp to the versions whose forward the taps follow."""
    import re
    from importlib.metadata import version
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    pin = re.search(r'"segmentation-models-pytorch>=([\d.]+),<([\d.]+)"', text)
    assert pin, "segmentation-models-pytorch is not pinned to a range"
    low, high = (tuple(int(v) for v in p.split(".")) for p in pin.groups())
    have = tuple(int(v) for v in re.findall(r"\d+", version("segmentation-models-pytorch"))[:2])
    assert low[:2] <= have < high[:2], (have, pin.groups())
