"""Quantization-aware distillation: an NNCF-quantized student in the one training loop.

``quant.qat: true`` quantizes the student with ``nncf.quantize`` (calibrated on the train
split) before the first step; the loop then fine-tunes it through its fake INT8
quantizers under the recipe's loss terms (task + KD from the FP32 teacher). Checkpoints
hold the quantizer scales in their state_dict (keys ``__nncf_hooks.*``) and where the
quantizers sit under ``quantization`` (NNCF's config as plain values, so the file still
loads with ``torch.load(weights_only=True)``); :func:`restore_qat` rebuilds them, for a
resume and for ``compress export`` (INT8 QDQ ONNX from the trained quantizers);
:func:`quantize_for_training` is the training run's step.

The config names the modules NNCF builds; a checkpoint is untrusted input, so only
NNCF's own quantizer classes are accepted (:func:`_check_config`), and only from
``nncf.torch.quantization.layers``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.config import RunConfig
from compress.data import build_split
from compress.errors import UserError
from compress.models import ModelError, check_finite, create_model, read_checkpoint
from compress.spec import ModelSpec

log = logging.getLogger("compress")

QAT_FORMAT = "segcompress-qat/1"
QUANTIZER_MODULE = "nncf.torch.quantization.layers"
QUANTIZER_CLASSES = ("SymmetricQuantizer", "AsymmetricQuantizer")
SCHEMES = ("symmetric", "asymmetric")
PRESETS = ("mixed", "performance")
_COMMAND_KEYS = {"hook_names_in_model", "module_path", "module_cls_name", "module_config"}
_SPEC_KEYS = {"num_bits": int, "mode": str, "signedness_to_force": (bool, type(None)),
              "narrow_range": bool, "half_range": bool, "scale_shape": list,
              "logarithm_scale": bool, "is_quantized_on_export": bool}


class QATError(UserError, ValueError):
    """A QAT state that cannot be used; the message names the file and the key."""


def quantize_student(model: nn.Module, images: Iterable[torch.Tensor], *,
                     preset: str = "mixed") -> nn.Module:
    """Insert NNCF's fake quantizers into ``model`` and set their ranges on ``images``.

    Args:
        model: the FP32 student (any device); quantized in place and returned.
        images: batches ``[B, 3, H, W]`` of normalised train images.
        preset: ``mixed`` (asymmetric activations) or ``performance`` (symmetric; TensorRT).

    Returns:
        The quantized model (same class; trainable: weights and quantizer scales).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    if preset not in PRESETS:
        raise QATError(f"quant.preset {preset!r}: valid: {', '.join(PRESETS)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = list(images)
    data = nncf.Dataset(batches, lambda x: x.to(device))
    # bias correction is for PTQ alone; training follows and corrects the biases itself
    q = nncf.quantize(model, data, preset=nncf.QuantizationPreset(preset), subset_size=len(batches),
                      advanced_parameters=AdvancedQuantizationParameters(
                          disable_bias_correction=True))
    return q.train(was_training)


def calibration_batches(dataset, samples: int, batch_size: int) -> list[torch.Tensor]:
    """The first ``samples`` images of a (non-augmented) split, in batches."""
    n = min(samples, len(dataset))
    images = [dataset[i]["image"] for i in range(n)]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, n, batch_size)]


def qat_state(model: nn.Module, preset: str) -> dict[str, Any]:
    """Where the quantizers sit, as plain values (stored as ``quantization`` in checkpoints)."""
    import nncf.torch

    cfg = nncf.torch.get_config(model)
    return {"format": QAT_FORMAT, "preset": preset,
            "nncf_config": {"compression_state": [_encode(c) for c in cfg["compression_state"]]}}


def _encode(command: dict) -> dict:
    conf = {}
    for k, v in command["module_config"].items():
        if isinstance(v, tuple):
            v = list(v)
        elif hasattr(v, "value") and isinstance(v.value, str):  # QuantizationScheme
            v = str(v.value)
        conf[k] = v
    return {"hook_names_in_model": list(command["hook_names_in_model"]),
            "module_path": command["module_path"], "module_cls_name": command["module_cls_name"],
            "module_config": conf}


def _check_config(state: Any, where: str) -> list[dict]:
    """The quantizer commands of a stored state, checked key by key (types, sizes, and only
    NNCF's quantizer classes from their own module)."""
    def bad(key: str, want: str) -> QATError:
        return QATError(f"{where}quantization key {key!r} must be {want}")

    if not isinstance(state, dict) or state.get("format") != QAT_FORMAT:
        raise bad("format", repr(QAT_FORMAT))
    if state.get("preset") not in PRESETS:
        raise bad("preset", " or ".join(PRESETS))
    cfg = state.get("nncf_config")
    commands = cfg.get("compression_state") if isinstance(cfg, dict) else None
    if not isinstance(commands, list) or not 0 < len(commands) <= 20_000:
        raise bad("nncf_config.compression_state", "a list of 1 to 20000 quantizers")
    for i, c in enumerate(commands):
        key = f"nncf_config.compression_state[{i}]"
        if not isinstance(c, dict) or set(c) != _COMMAND_KEYS:
            raise bad(key, f"a mapping with keys {sorted(_COMMAND_KEYS)}")
        if c["module_path"] != QUANTIZER_MODULE or c["module_cls_name"] not in QUANTIZER_CLASSES:
            raise bad(f"{key}.module_cls_name", f"one of NNCF's {', '.join(QUANTIZER_CLASSES)} "
                      f"from {QUANTIZER_MODULE} (nothing else is imported)")
        names = c["hook_names_in_model"]
        if not (isinstance(names, list) and 0 < len(names) <= 64 and all(
                isinstance(n, str) and 0 < len(n) <= 500 for n in names)):
            raise bad(f"{key}.hook_names_in_model", "a list of hook names")
        conf = c["module_config"]
        if not isinstance(conf, dict) or set(conf) - set(_SPEC_KEYS):
            raise bad(f"{key}.module_config", f"a mapping of {', '.join(_SPEC_KEYS)}")
        for k, v in conf.items():
            kind = _SPEC_KEYS[k]
            if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
                raise bad(f"{key}.module_config.{k}", f"of type {getattr(kind, '__name__', kind)}")
        if conf.get("mode") not in SCHEMES or not 2 <= conf.get("num_bits", 8) <= 16:
            raise bad(f"{key}.module_config", "a symmetric/asymmetric quantizer of 2 to 16 bits")
        shape = conf.get("scale_shape", [1])
        if not (1 <= len(shape) <= 5 and all(isinstance(d, int) and not isinstance(d, bool)
                                             and 0 < d <= 65_536 for d in shape)):
            raise bad(f"{key}.module_config.scale_shape", "1 to 5 positive integers")
    return commands


def restore_qat(model: nn.Module, state: Any, source: str | Path | None = None) -> nn.Module:
    """Put the quantizers a checkpoint's ``quantization`` describes into ``model`` (the
    FP32 architecture, any weights); load the checkpoint's state_dict next.

    Raises:
        QATError: a malformed state or one naming anything but NNCF's quantizers.
    """
    import nncf.torch
    from nncf.common.quantization.structs import QuantizationScheme

    where = f"{source}: " if source else ""
    commands = _check_config(state, where)
    decoded = []
    for c in commands:
        conf = dict(c["module_config"])
        conf["mode"] = QuantizationScheme(conf["mode"])
        if "scale_shape" in conf:
            conf["scale_shape"] = tuple(conf["scale_shape"])
        decoded.append({**c, "module_config": conf})
    try:
        return nncf.torch.load_from_config(model, {"compression_state": decoded},
                                           allowed_modules=(QUANTIZER_MODULE,))
    except Exception as e:  # noqa: BLE001 - NNCF raises many types; one line
        raise QATError(f"{where}quantization: NNCF cannot place these quantizers in "
                       f"{type(model).__name__}: {' '.join(str(e).split())[:200]}") from None


def load_qat_model(path: str | Path) -> tuple[nn.Module, ModelSpec, dict] | None:
    """The fake-quantized model of a QAT checkpoint, in eval mode, with its spec and
    ``quantization`` state; None for a checkpoint without one.

    Raises:
        QATError, ModelError: a malformed state, weights that do not fit (named).
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("quantization")
    if state is None or ckpt["spec"] is None:
        return None
    check_finite(ckpt["state_dict"], path)
    model = restore_qat(create_model(ckpt["spec"], source=path), state, path)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:200]
        raise ModelError(f"{path}: weights do not fit its quantized model: {first}") from None
    return model.eval(), ckpt["spec"], state


def set_qdq_export(model: nn.Module) -> int:
    """Make every NNCF quantizer of ``model`` export as ONNX QuantizeLinear /
    DequantizeLinear pairs (instead of OpenVINO's FakeQuantize). Returns how many."""
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    n = 0
    for m in model.modules():
        if isinstance(m, BaseQuantizer):
            m.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
            n += 1
    return n


def quantize_for_training(student: nn.Module, cfg: RunConfig, spec: ModelSpec,
                          last_state: dict | None, run_dir: Path) -> nn.Module:
    """``quant.qat``: NNCF's quantizers in the student, as a resume's ``last.pt`` holds them
    (:func:`restore_qat`), else calibrated on ``quant.calib_samples`` train images."""
    if last_state is not None:
        if not last_state.get("quantization"):
            raise QATError(f"cannot resume {run_dir} with quant.qat: its last.pt holds no "
                             "quantizers")
        return restore_qat(student, last_state["quantization"], run_dir)
    calib = build_split(cfg.data, cfg.data.train_split, spec.mean, spec.std,
                        cfg.ignore_index, False, cfg.seed)
    batches = calibration_batches(calib, cfg.quant.calib_samples, cfg.data.batch_size)
    log.info(f"quant.qat: nncf.quantize ({cfg.quant.preset}) calibrated on "
             f"{sum(len(b) for b in batches)} train images")
    return quantize_student(student, batches, preset=cfg.quant.preset)


def qat_extra(model: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    """What a training run's checkpoint adds under ``quant.qat``: where the quantizers of
    ``model`` (unwrapped from DDP) sit (``quantization``); nothing otherwise."""
    if not cfg.quant.qat:
        return {}
    return {"quantization": qat_state(model, cfg.quant.preset)}
