"""PyTorch -> ONNX export (checked and simplified) and numeric verification against PyTorch.

The exported graph takes ``images`` float32 ``[N, 3, H, W]`` normalised with the spec's
mean/std, and returns ``logits`` float32 ``[N, C, H, W]`` or, with ``argmax=True``,
``classes`` int64 ``[N, H, W]``. A multi-task model (``spec.tasks``) gives one output per
task, named by :func:`deploy.metadata.output_names` (``seg``: logits or, with argmax, class
ids; ``depth``: float32 ``[N, H, W]``), verified output by output (:func:`compare`). The
model spec (with ``"output"``) is stored in the ONNX metadata under ``segcompress.spec``
so a lone ``.onnx`` file still describes itself.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.spec import ModelSpec
from deploy.arrays import class_ids
from deploy.errors import ExportError, VerificationError, first_line
from deploy.metadata import SINGLE_OUTPUT_NAMES, output_names, set_spec_metadata
from deploy.runtime import load_runtime

INPUT_NAME = "images"
OUTPUT_NAMES = SINGLE_OUTPUT_NAMES  # single-task graphs; multi-task: deploy.metadata.output_names
DEFAULT_OPSET = 17

Batches = Iterable[tuple[np.ndarray, np.ndarray | None]]
Predict = Callable[[np.ndarray], np.ndarray]


class ExportHead(nn.Module):
    """The student alone, optionally followed by argmax over classes (class ids out).

    A multi-task student (its forward returns a dict) gives a tuple in task order,
    segmentation first (argmax applies to it alone): the graph's named outputs.
    """

    def __init__(self, model: nn.Module, argmax: bool = False) -> None:
        super().__init__()
        self.model, self.argmax = model, argmax

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(images)
        if isinstance(out, dict):
            seg, *rest = out.values()
            return (self._classes(seg), *rest)
        return self._classes(out)

    def _classes(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.argmax:
            return logits
        if logits.shape[1] == 1:  # binary head: one logit, class 1 where it is positive
            return (logits[:, 0] > 0).to(torch.int64)
        return logits.argmax(1)


def export_spec(spec: ModelSpec, size: tuple[int, int], argmax: bool) -> ModelSpec:
    """The spec of an exported model: input size fixed to ``size``, ``output`` recorded."""
    return replace(spec, input_size=[int(size[0]), int(size[1])],
                   output="argmax" if argmax else "logits")


def input_shape(size: tuple[int, int], batch_size: int, dynamic_batch: bool,
                dynamic_spatial: bool) -> list[int | str]:
    """Input shape as written in manifests: symbolic dims are names (``"batch"``)."""
    h, w = size
    return ["batch" if dynamic_batch else batch_size, 3,
            "height" if dynamic_spatial else h, "width" if dynamic_spatial else w]


def export_onnx(model: nn.Module, path: str | Path, spec: ModelSpec, *,
                size: tuple[int, int], opset: int = DEFAULT_OPSET, batch_size: int = 1,
                dynamic_batch: bool = True, dynamic_spatial: bool = False,
                argmax: bool = False, simplify: bool = True) -> Path:
    """Export the student to ONNX, check it with ``onnx.checker`` and simplify it (onnxslim).

    Args:
        model: eval-mode student, ``[N, 3, H, W]`` -> ``[N, C, H, W]`` logits (or a dict
            of named outputs, segmentation first: one graph output each).
        path: where the ``.onnx`` goes.
        spec: the model spec (stored in the file's metadata, with ``output``).
        size: ``(H, W)`` of the example input (multiples of 32).
        opset: ONNX opset.
        batch_size: batch of the example input (the fixed batch when not dynamic).
        dynamic_batch: symbolic batch axis.
        dynamic_spatial: symbolic height and width axes.
        argmax: put argmax in the graph: int64 class ids ``[N, H, W]`` out.
        simplify: run onnxslim (constant folding, dead-node removal, fusions).

    Returns:
        ``path``.

    Raises:
        ExportError: the export, the checker or the simplifier failed (reason given).
    """
    import onnx

    path = Path(path)
    head = ExportHead(model, argmax).eval()
    names = output_names(export_spec(spec, size, argmax))
    output_name = names[0]
    dyn: dict[str, dict[int, str]] = {}
    if dynamic_batch or dynamic_spatial:
        axes = {}
        if dynamic_batch:
            axes[0] = "batch"
        if dynamic_spatial:
            axes.update({2: "height", 3: "width"})
        out_axes = {k if argmax is False or k == 0 else k - 1: v for k, v in axes.items()}
        dyn = {INPUT_NAME: axes, output_name: out_axes}
        for name in names[1:]:  # dense task outputs: [N, H, W]
            dyn[name] = {k if k == 0 else k - 1: v for k, v in axes.items()}
    example = torch.zeros(batch_size, 3, *size)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: it needs no onnxscript and gives plain ops that
            # NNCF, OpenVINO and TensorRT's parser all read.
            torch.onnx.export(head, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes=dyn or None, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types; one message
        raise ExportError(f"export: torch.onnx.export failed at opset {opset}: "
                          f"{first_line(e)}") from None
    proto = onnx.load_from_string(buf.getvalue())
    _check(proto, "export")
    if simplify:
        import onnxslim

        try:
            proto = onnxslim.slim(proto)
        except Exception as e:  # noqa: BLE001 - any failure means the same
            raise ExportError(f"export: onnxslim could not simplify the graph: "
                              f"{first_line(e)}") from None
        _check(proto, "export (after onnxslim)")
    set_spec_metadata(proto, export_spec(spec, size, argmax))
    onnx.save(proto, str(path))
    return path


def _check(proto, step: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{step}: onnx.checker rejected the model: {first_line(e)}") from None


# ---------------------------------------------------------------- verification


class Comparison:
    """Running comparison of a candidate model against a reference, image by image.

    Collects the largest and mean absolute output difference (logits only), the fraction
    of pixels whose class agrees, and, when masks are given, the confusion matrices of
    both so their mIoU can be compared on the same images.

    ``reference_name`` names the reference in the result (``miou_<reference_name>``), so the key
    reaches the manifest as it is made (``miou_pytorch``, ``miou_f32``), never renamed.
    """

    def __init__(self, class_names: list[str] | None = None, ignore_index: int = 255,
                 reference_name: str = "reference") -> None:
        self.class_names, self.ignore_index = class_names, ignore_index
        self.reference_key = f"miou_{reference_name}"
        self.images = 0
        self.pixels = 0
        self.agree = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.values = 0
        self.logits = True
        c = len(class_names) if class_names else 0
        self.conf_ref = torch.zeros(c, c, dtype=torch.int64) if c else None
        self.conf_out = torch.zeros(c, c, dtype=torch.int64) if c else None

    def update(self, ref: np.ndarray, out: np.ndarray, masks: np.ndarray | None = None) -> None:
        from compress.metrics import update_confusion

        ref, out = np.asarray(ref), np.asarray(out)
        if ref.ndim == 4 and out.ndim == 4 and ref.shape == out.shape:
            diff = np.abs(ref.astype(np.float32) - out.astype(np.float32))
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.values += diff.size
        else:
            self.logits = False
        ids_ref, ids_out = class_ids(ref), class_ids(out)
        if ids_ref.shape != ids_out.shape:
            raise VerificationError(f"verify: output shapes differ: reference {ref.shape}, "
                                    f"candidate {out.shape}")
        self.images += ids_ref.shape[0]
        self.pixels += ids_ref.size
        self.agree += int((ids_ref == ids_out).sum())
        if masks is not None and self.conf_ref is not None:
            t = torch.from_numpy(np.asarray(masks, np.int64))
            update_confusion(self.conf_ref, torch.from_numpy(ids_ref), t, self.ignore_index)
            update_confusion(self.conf_out, torch.from_numpy(ids_out), t, self.ignore_index)

    @property
    def agreement(self) -> float:
        return self.agree / self.pixels if self.pixels else float("nan")

    def result(self) -> dict[str, Any]:
        """``{"images", "pixels", "agreement", "max_abs_diff", "mean_abs_diff",
        "miou_<reference_name>", "miou"}`` (mIoU in [0, 1]; None without labels)."""
        from compress.metrics import scores

        res: dict[str, Any] = {
            "images": self.images,
            "pixels": self.pixels,
            "agreement": self.agreement,
            "max_abs_diff": self.max_abs if self.logits and self.values else None,
            "mean_abs_diff": self.sum_abs / self.values if self.logits and self.values else None,
            self.reference_key: None,
            "miou": None,
        }
        if self.conf_ref is not None and int(self.conf_ref.sum()):
            res[self.reference_key] = scores(self.conf_ref, self.class_names)["miou"]
            res["miou"] = scores(self.conf_out, self.class_names)["miou"]
        return res


class DenseComparison:
    """Running comparison of one dense output (a depth map, float ``[N, H, W]``) of a
    candidate against the reference's, and of both against ground-truth depth where a
    batch carries it (0 = no value; :class:`compress.metrics.DepthMeter`'s protocol)."""

    def __init__(self, reference_name: str = "reference") -> None:
        from compress.metrics import DepthMeter

        self.reference_name = reference_name
        self.max_abs = self.sum_abs = self.sum_sq = 0.0
        self.values = 0
        self.meter_ref, self.meter_out = DepthMeter(), DepthMeter()

    def update(self, ref: np.ndarray, out: np.ndarray, target: np.ndarray | None = None) -> None:
        ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise VerificationError(f"verify: dense output shapes differ: reference "
                                    f"{ref.shape}, candidate {out.shape}")
        diff = np.abs(ref - out)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.sum_sq += float((diff ** 2).sum())
        self.values += diff.size
        if target is not None and np.shape(target) == ref.shape:
            t = torch.from_numpy(np.asarray(target, np.float32))
            self.meter_ref.update(torch.from_numpy(ref.astype(np.float32)), t)
            self.meter_out.update(torch.from_numpy(out.astype(np.float32)), t)

    def result(self) -> dict[str, Any]:
        """``{"max_abs_diff", "mean_abs_diff", "rmse_vs_reference", "rmse", "abs_rel",
        "delta1", "rmse_<reference_name>", "depth_pixels"}``: the ground-truth figures of
        the candidate (``rmse`` ...) and the reference's RMSE are None without depth labels."""
        n = self.values
        res: dict[str, Any] = {
            "max_abs_diff": self.max_abs if n else None,
            "mean_abs_diff": self.sum_abs / n if n else None,
            "rmse_vs_reference": float(np.sqrt(self.sum_sq / n)) if n else None,
            "rmse": None, "abs_rel": None, "delta1": None,
            f"rmse_{self.reference_name}": None, "depth_pixels": 0,
        }
        if self.meter_out.n:
            got, ref = self.meter_out.compute(), self.meter_ref.compute()
            res.update(rmse=got["rmse"], abs_rel=got["abs_rel"], delta1=got["delta1"],
                       depth_pixels=got["pixels"])
            res[f"rmse_{self.reference_name}"] = ref["rmse"]
        return res


def _seg_of(out: np.ndarray | dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(segmentation output, the other named outputs) of a predictor's output."""
    if not isinstance(out, dict):
        return out, {}
    (_, seg), *rest = out.items()
    return seg, dict(rest)


def compare(reference: Predict, candidate: Predict, batches: Batches,
            class_names: list[str] | None = None, ignore_index: int = 255, *,
            reference_name: str = "reference") -> dict[str, Any]:
    """Run both predictors on every batch and return :meth:`Comparison.result` (the
    reference's mIoU as ``miou_<reference_name>``).

    Predictors return an array (the segmentation output) or a dict of named outputs,
    segmentation first (:meth:`deploy.runtime.Runtime.run_outputs`). With more than one
    output the result adds ``"outputs"``: per output name, the segmentation figures
    (``agreement``, ``max_abs_diff``, ``mean_abs_diff``, ``miou``...) and each dense
    output's :meth:`DenseComparison.result`. Batches are ``(images, masks)`` or
    ``(images, masks, depth)``; the depth labels score every dense output.
    """
    cmp = Comparison(class_names, ignore_index, reference_name)
    dense: dict[str, DenseComparison] = {}
    seg_name = None
    for batch in batches:
        images, masks = batch[0], batch[1]
        depth = batch[2] if len(batch) > 2 else None
        ref, out = reference(images), candidate(images)
        if isinstance(ref, dict) and seg_name is None:
            seg_name = next(iter(ref))
        (ref, ref_rest), (out, out_rest) = _seg_of(ref), _seg_of(out)
        for name in ref_rest.keys() & out_rest.keys():
            dense.setdefault(name, DenseComparison(reference_name)).update(
                ref_rest[name], out_rest[name], depth)
        cmp.update(ref, out, masks)
    if not cmp.images:
        raise VerificationError("verify: no images to verify on")
    res = cmp.result()
    if dense:
        seg_keys = ("agreement", "max_abs_diff", "mean_abs_diff", cmp.reference_key, "miou")
        res["outputs"] = {seg_name: {"kind": "segmentation", **{k: res[k] for k in seg_keys}},
                          **{n: {"kind": "depth", **d.result()} for n, d in dense.items()}}
    return res


def torch_predictor(model: nn.Module, argmax: bool = False) -> Predict:
    """``numpy -> numpy`` predictor for an eval-mode PyTorch model on the CPU (the
    segmentation output of a multi-task model)."""
    head = ExportHead(model, argmax).eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        out = head(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        return (out[0] if isinstance(out, tuple) else out).numpy()

    return predict


def torch_outputs(model: nn.Module, argmax: bool, names: list[str]
                  ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``numpy -> {name: numpy}`` for an eval-mode PyTorch model on the CPU: every output
    of the exported graph, named ``names`` (:func:`deploy.metadata.output_names`)."""
    head = ExportHead(model, argmax).eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        out = head(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(names, out)}

    return predict


def verify_onnx(path: str | Path, model: nn.Module, batches: Batches, *,
                min_agreement: float = 0.999, class_names: list[str] | None = None,
                ignore_index: int = 255, threads: int | None = None,
                reference_name: str = "reference") -> dict[str, Any]:
    """Compare an exported ONNX model (ONNX Runtime, CPU) with the PyTorch model.

    Args:
        path: the ``.onnx`` from :func:`export_onnx`.
        model: the PyTorch student it came from.
        batches: ``(images float32 [N, 3, H, W], masks int64 [N, H, W] | None)`` pairs,
            or triples with depth labels ``float32 [N, H, W]`` (a multi-task model's).
        min_agreement: smallest allowed fraction of pixels with the same class.
        class_names: score mIoU of both when given (with masks).
        reference_name: PyTorch's mIoU comes back as ``miou_<reference_name>``.

    Returns:
        :func:`compare`'s result (per output for a multi-task model) plus
        ``"min_agreement"``.

    Raises:
        VerificationError: agreement below ``min_agreement``.
    """
    rt = load_runtime(path, threads=threads)
    argmax = rt.spec.output == "argmax"
    res = compare(torch_outputs(model, argmax, rt.output_names), rt.run_outputs, batches,
                  class_names, ignore_index, reference_name=reference_name)
    res["min_agreement"] = min_agreement
    if not res["agreement"] >= min_agreement:
        m = res["max_abs_diff"]
        diff = "" if m is None else f", max |logit diff| {m:.3g}"
        raise VerificationError(
            f"verify: ONNX Runtime and PyTorch agree on {res['agreement'] * 100:.3f}% of "
            f"pixels over {res['images']} images, below the required "
            f"{min_agreement * 100:.3f}%{diff}; the export was not kept")
    return res
