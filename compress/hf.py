"""Hugging Face transformers teachers: a semantic-segmentation model from a local folder.

``teacher.hf: DIR`` (distillation), ``compress eval DIR`` and ``compress pseudo-label
--teacher DIR`` load a folder written by ``save_pretrained`` (``config.json``, the
weights, ``preprocessor_config.json``) with
``transformers.AutoModelForSemanticSegmentation`` (SegFormer, BEiT, DPT, MobileViT,
UperNet...), or Mask2Former (``AutoModelForUniversalSegmentation``) in semantic mode
(``pip install -e '.[hf]'``): :data:`HF_HEADS` says how each kind's output becomes
per-class logits. :func:`load_hf_model` returns
:class:`HFSegmentationTeacher`, an ``nn.Module`` mapping normalised images to logits at
the input size, and a :class:`compress.spec.ModelSpec` built from the folder: classes and
names from ``config.id2label``, normalisation and input size from the image processor's
saved settings, so the rest of the toolkit (the :class:`compress.distill.Teacher`
wrapper, evaluation, pseudo-labels) treats it as any other model.

Nothing is downloaded and no code from the folder runs: ``local_files_only=True`` and
``trust_remote_code=False`` always, and a ``config.json`` naming its own code
(``auto_map``) is refused. A hub id (``org/name``) is accepted only when it is already in
the local Hugging Face cache.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ModelError
from compress.io import read_text
from compress.models import LEVEL_STRIDES, check_finite, load_model
from compress.spec import ModelSpec

log = logging.getLogger("compress")

EXTRA = "pip install -e '.[hf]'"
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
JSON_MAX_BYTES = 10 << 20
# a hub id: "name" or "org/name" (what the Hub allows), never a path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
# tap name -> stride of a 4-D hidden state (compress.models.LEVEL_STRIDES without "decoder")
STRIDE_LEVELS = {s: lv for lv, s in LEVEL_STRIDES.items() if s}


def transformers_module(what: str = "teacher.hf"):
    """The ``transformers`` package, or one line naming the extra that installs it."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ModelError(f"{what} needs the transformers package: {EXTRA}") from None


def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a transformers ``config.json``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


def semantic_logits(out) -> torch.Tensor:
    """A semantic-segmentation model's own logits."""
    return out.logits


def query_logits(out) -> torch.Tensor:
    """Mask2Former's semantic map, as transformers' ``post_process_semantic_segmentation``
    forms it: each query's class probabilities (the "no object" class dropped) times its
    mask probability, summed over the queries; its log is the logits (a softmax of them
    gives the map normalised per pixel)."""
    classes = out.class_queries_logits.softmax(-1)[..., :-1]
    masks = out.masks_queries_logits.sigmoid()
    return torch.einsum("bqc,bqhw->bchw", classes, masks).clamp_min(1e-6).log()


@dataclass(frozen=True)
class HFHead:
    """How one family of transformers models is loaded and read: its Auto class, its
    output -> logits, and the output field holding its 4-D hidden states."""

    auto_class: str
    logits: Callable[[Any], torch.Tensor]
    hidden: str


SEMANTIC = HFHead("AutoModelForSemanticSegmentation", semantic_logits, "hidden_states")
# model_type -> head, beside every AutoModelForSemanticSegmentation type (SEMANTIC);
# OneFormer needs a task text input, MaskFormer's and DETR's outputs differ: not here
HF_HEADS = {"mask2former": HFHead("AutoModelForUniversalSegmentation", query_logits,
                                  "encoder_hidden_states")}


class HFSegmentationTeacher(nn.Module):
    """A transformers segmentation model as the toolkit's models are called.

    ``forward(x [N, 3, H, W])`` (normalised as the model's processor does) returns logits
    ``[N, C, H, W]``: the model's own (:data:`HF_HEADS`; SegFormer's at 1/4 of the input)
    resized back, bilinear (what the processor's ``post_process_semantic_segmentation``
    does). ``forward_taps(x)`` also returns the 4-D hidden states (``output_hidden_states``:
    the head's ``hidden`` field) named by their stride: ``stride4`` ... ``stride32``
    (SegFormer's four stages, Mask2Former's backbone); a ViT's token sequences have no
    stride and give no level.
    """

    def __init__(self, model: nn.Module, head: HFHead = SEMANTIC) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.head.logits(self.model(pixel_values=x, return_dict=True)), x)

    def forward_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.model(pixel_values=x, output_hidden_states=True, return_dict=True)
        hidden = getattr(out, self.head.hidden, None) or ()
        return _upsample(self.head.logits(out), x), stride_levels(hidden, x.shape[-2:])


def _upsample(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(x.shape[-2:]):
        return logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def stride_levels(hidden: tuple | list, size) -> dict[str, torch.Tensor]:
    """``{stride<s>: tensor}`` for the 4-D hidden states ``[N, C, H / s, W / s]`` whose
    stride ``s`` is a level (:data:`STRIDE_LEVELS`); the last one of each stride wins."""
    h, w = int(size[0]), int(size[1])
    out = {}
    for t in hidden:
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            continue
        th, tw = t.shape[-2:]
        if th and tw and h % th == 0 and w % tw == 0 and h // th == w // tw:
            level = STRIDE_LEVELS.get(h // th)
            if level:
                out[level] = t
    return out


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if path.stat().st_size > JSON_MAX_BYTES:
        raise ModelError(f"{what} {path}: more than {JSON_MAX_BYTES >> 20} MB: not a config")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ModelError(f"{what} {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path}: not a JSON mapping")
    return data


def resolve_folder(source: str | Path, what: str = "teacher.hf") -> Path:
    """The local folder of ``source``: a folder, or a hub id already in the Hugging Face
    cache (never downloaded).

    Raises:
        ModelError: neither (one line: give a local folder).
    """
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise ModelError(f"{what} {source}: no {CONFIG_FILE} in the folder: give a folder "
                             "written by save_pretrained")
        return p
    name = str(source)
    if not _HUB_ID.match(name) or name.startswith((".", "~")) or p.exists():
        raise ModelError(f"{what} {source}: folder not found (give a folder written by "
                         "save_pretrained)")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id=name, local_files_only=True))
    except (ImportError, OSError, ValueError):
        folder = None
    if folder is None or not (folder / CONFIG_FILE).is_file():
        raise ModelError(f"{what} {source}: not a local folder, and not in the Hugging Face "
                         "cache; nothing is downloaded (the Hub is not reached): download it "
                         f"first (`hf download {name}`, or save_pretrained) and give the folder")
    return folder


def processor_settings(folder: Path, what: str = "teacher.hf"
                       ) -> tuple[list[float], list[float], tuple[int, int] | None]:
    """``(mean, std, size)`` of the model's saved image processor, in the toolkit's terms
    (images scaled to [0, 1], then ``(x - mean) / std``); ``size`` is None when the
    processor resizes to no fixed height and width (``shortest_edge``...).

    The processor computes ``((x * r) - m) / s`` on 0..255 pixels (``r`` =
    ``rescale_factor`` when ``do_rescale``, else 1; ``m, s`` = ``image_mean``,
    ``image_std`` when ``do_normalize``, else 0, 1): that is ``mean = m / (255 r)``,
    ``std = s / (255 r)``."""
    path = folder / PROCESSOR_FILE
    if not path.is_file():
        raise ModelError(f"{what} {folder}: no {PROCESSOR_FILE}: save the model's image "
                         "processor beside it (processor.save_pretrained(folder)); it gives the "
                         "size and normalisation the model was trained with")
    cfg = _read_json(path, what)
    r = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    m, s = [0.0] * 3, [1.0] * 3
    if cfg.get("do_normalize", True):
        m, s = cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3)
        m = m * 3 if isinstance(m, list) and len(m) == 1 else m
        s = s * 3 if isinstance(s, list) and len(s) == 1 else s
    try:
        mean = [float(v) / (255 * r) for v in m]
        std = [float(v) / (255 * r) for v in s]
    except (TypeError, ValueError, ZeroDivisionError):
        raise ModelError(f"{what} {path}: image_mean / image_std / rescale_factor are not "
                         "numbers") from None
    if len(mean) != 3 or len(std) != 3:
        raise ModelError(f"{what} {path}: image_mean / image_std must have 3 values")
    size = cfg.get("size") if cfg.get("do_resize", True) else None
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        return mean, std, (int(size["height"]), int(size["width"]))
    return mean, std, None


def class_names(config) -> list[str]:
    """The class names of ``config.id2label`` in id order; ``class_<i>`` where it has no
    real names (transformers' default ``LABEL_<i>``, or ids that are not 0..C-1)."""
    n = int(config.num_labels)
    raw = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [raw.get(i, "") for i in range(n)]
    if len(raw) != n or any(not v or v == f"LABEL_{i}" for i, v in enumerate(names)):
        return [f"class_{i}" for i in range(n)]
    return names


def load_hf_model(source: str | Path, *, what: str = "teacher.hf", device="cpu",
                  input_size: tuple[int, int] | None = None,
                  fallback_size: tuple[int, int] = (512, 512), levels=(),
                  allow_missing_keys: bool = False) -> tuple[HFSegmentationTeacher, ModelSpec]:
    """Load a transformers semantic-segmentation model as :class:`HFSegmentationTeacher`
    (eval mode, float32) and its spec.

    Args:
        source: a folder written by ``save_pretrained``, or a hub id in the local cache.
        what: the key or option that named it (in every error).
        input_size: ``[H, W]`` to run at instead of the processor's size.
        fallback_size: the size when the processor gives no fixed height and width.
        levels: feature levels the caller taps (checked against the model's).
        allow_missing_keys: warn instead of refusing weights the folder lacks.

    Raises:
        ModelError: transformers missing, no such folder, remote code (``auto_map``), a
            model type that is not semantic segmentation, missing or non-finite weights,
            or a feature level the model does not give (one line each).
    """
    tf = transformers_module(what)
    folder = resolve_folder(source, what)
    config = _read_json(folder / CONFIG_FILE, what)
    if "auto_map" in config:
        raise ModelError(f"{what} {source}: its {CONFIG_FILE} names its own code (auto_map): "
                         "refused, segcompress never runs code from a model folder "
                         "(trust_remote_code=False); use a model transformers has built in")
    mean, std, size = processor_settings(folder, what)
    model_type = config.get("model_type")
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as known,
        )
    except ImportError:  # another layout: transformers' own error below says it
        known = None
    head = HF_HEADS.get(model_type, SEMANTIC)
    if known is not None and model_type not in known and model_type not in HF_HEADS:
        raise ModelError(f"{what} {source}: model_type {model_type!r} is not a semantic-"
                         "segmentation model of transformers (AutoModelForSemanticSegmentation: "
                         f"{', '.join(known)}; or {', '.join(HF_HEADS)} in semantic mode); "
                         "other universal-segmentation models (OneFormer, MaskFormer) are "
                         "not supported")
    tf.utils.logging.disable_progress_bar()
    try:
        hf, info = getattr(tf, head.auto_class).from_pretrained(
            str(folder), trust_remote_code=False, local_files_only=True,
            output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{what} {source}: transformers could not load it: {first[:300]}"
                         ) from None
    _check_loaded(info, len(hf.state_dict()), source, what, allow_missing_keys)
    check_finite(hf.state_dict(), source)
    c = hf.config
    ignore = getattr(c, "semantic_loss_ignore_index", 255)
    size = tuple(input_size or size or fallback_size)
    spec = ModelSpec(arch=type(hf).__name__, encoder=str(model_type), classes=int(c.num_labels),
                     class_names=class_names(c),
                     ignore_index=ignore if isinstance(ignore, int) else 255,
                     mean=mean, std=std, input_size=[int(size[0]), int(size[1])])
    model = HFSegmentationTeacher(hf, head).float().eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    _check_levels(model, spec, list(levels), source, what, device)
    log.info(f"{what} {source}: {spec.arch}, {spec.classes} classes, at "
             f"{spec.input_size[0]}x{spec.input_size[1]}, mean {[round(v, 3) for v in mean]} "
             f"std {[round(v, 3) for v in std]}")
    return model, spec


def _check_loaded(info: dict, total: int, source, what: str, allow_missing: bool) -> None:
    """Refuse (or, allowed, warn about) weights the folder did not hold: transformers
    would run them on their random initial values with a warning only."""
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(
        info.get("unexpected_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if mismatched:
        raise ModelError(f"{what} {source}: {len(mismatched)} weight(s) of another shape than "
                         f"its config.json says (e.g. {mismatched[0]})")
    if missing and not allow_missing:
        raise ModelError(f"{what} {source}: {len(missing)} of {total} weights missing (e.g. "
                         f"{missing[0]}): refusing to run weights on their initial values "
                         "(teacher.allow_missing_keys=true to allow it)")
    if missing:
        log.warning(f"{what} {source}: {len(missing)} of {total} weights missing (e.g. "
                    f"{missing[0]}) run on their random initial values "
                    "(teacher.allow_missing_keys=true)")
    if unexpected:
        log.warning(f"{what} {source}: {len(unexpected)} tensors in the folder fit no weight "
                    f"(e.g. {unexpected[0]}) and were ignored")


def _check_levels(model: HFSegmentationTeacher, spec: ModelSpec, levels: list[str], source,
                  what: str, device) -> None:
    """Refuse feature levels the model does not give, before any training."""
    if not levels:
        return
    h, w = spec.input_size
    with torch.no_grad():
        _, feats = model.forward_taps(torch.zeros(1, 3, h, w, device=device))
    missing = [lv for lv in levels if lv not in feats]
    if missing:
        have = ", ".join(feats) or "none (its hidden states are not 2-D feature maps)"
        raise ModelError(f"{what} {source}: feature level(s) {', '.join(missing)} are not among "
                         f"what {spec.arch} gives ({have}): tap those or distil on the logits "
                         "(kd.feature.levels, kd.cwd.levels, kd.relation.level)")


def load_segmenter(path: str | Path, *, what: str, device="cpu",
                   spec: ModelSpec | None = None) -> tuple[torch.nn.Module, ModelSpec]:
    """A segmentation model (eval mode) and its spec from a segcompress checkpoint or a
    transformers model folder (``config.json`` inside: :func:`load_hf_model`); ``what``
    names the option in errors, ``spec`` describes a plain state_dict."""
    if is_hf_dir(path):
        return load_hf_model(path, what=what, device=device)
    model, spec = load_model(path, spec=spec, device=device, return_spec=True)
    return model.eval(), spec
