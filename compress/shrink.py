"""Rebuilding a pruned model: the unpruned architecture with some tensors shrunk to the
shapes a spec's ``pruned_shapes`` lists (what ``compress prune`` wrote).

Part of the model floor: :func:`compress.models.create_model` calls
:func:`shrink_to_shapes` for a spec with ``pruned_shapes``; :mod:`compress.prune` (the
search that finds those shapes) builds on the factory, so this module imports neither.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.spec import ModelError

# the modules whose tensors Torch-Pruning shrinks, and how their attributes follow
_CONV, _NORM = nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase


def shrink_to_shapes(model: nn.Module, shapes: dict[str, list[int]],
                     source: str | Path | None = None) -> nn.Module:
    """Make the listed tensors of ``model`` the given (smaller) shapes, in place, and set
    the channel attributes of their modules (conv in/out channels and groups, norm
    features, linear in/out features) to match. Values are uninitialised: load a
    state_dict next.

    Raises:
        ModelError: a name the model does not have, a shape of another rank or larger than
            the unpruned one, a module kind this cannot shrink, or widths that do not fit
            together (a dry forward pass at 64x64 fails); one line naming ``source``.
    """
    where = f"{source}: " if source else ""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    touched: dict[str, nn.Module] = {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise ModelError(f"{where}model spec key 'pruned_shapes' names {name!r}, which "
                             "this architecture does not have")
        old = tuple(tensors[name].shape)
        if len(shape) != len(old) or any(n > o for n, o in zip(shape, old)):
            raise ModelError(f"{where}model spec key 'pruned_shapes': {name} {list(shape)} "
                             f"is not a pruned shape of the architecture's {list(old)}")
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name)
        if not isinstance(module, (_CONV, _NORM, nn.Linear, nn.LayerNorm, nn.GroupNorm)):
            raise ModelError(f"{where}model spec key 'pruned_shapes': {name} belongs to a "
                             f"{type(module).__name__}, which pruning never shrinks")
        old_t = tensors[name]
        new = torch.empty(tuple(shape), dtype=old_t.dtype)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(new, requires_grad=old_t.requires_grad)
        else:
            module._buffers[attr] = new
        touched[mod_name] = module
    for module in touched.values():
        _sync_attributes(module)
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    except (RuntimeError, ValueError, IndexError) as e:
        msg = " ".join(str(e).split())[:160]
        raise ModelError(f"{where}model spec key 'pruned_shapes': the pruned widths do not "
                         f"fit together ({msg})") from None
    return model


def _sync_attributes(module: nn.Module) -> None:
    """Channel attributes from the (new) tensor shapes of one module."""
    if isinstance(module, _CONV):
        w = module.weight
        depthwise = module.groups > 1 and module.groups == module.in_channels
        per_group = module.out_channels // module.groups
        if module.transposed:  # weight [in, out / groups, ...]
            module.in_channels = w.shape[0]
            module.out_channels = w.shape[1] * module.groups
        else:  # weight [out, in / groups, ...]
            module.out_channels = w.shape[0]
            if depthwise:
                module.groups = max(1, w.shape[0] // max(per_group, 1))
            module.in_channels = w.shape[1] * module.groups
    elif isinstance(module, _NORM):
        t = module.weight if module.weight is not None else module.running_mean
        module.num_features = t.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
