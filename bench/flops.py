"""Parameters, multiply-accumulates and size on disk of a segmentation model.

MACs come from fvcore's jit-trace counter (one fused multiply-add = one MAC for conv,
linear and matmul) plus handlers for the ops fvcore leaves out by default, so that
activations, element-wise arithmetic, pooling, softmax and every interpolation mode are
counted too. Conventions for the added ops (all per image, batch 1):

* element-wise ops (activations, add, mul, clamp, comparisons...): 1 per output element;
* reductions (sum, mean, max, norm...) and adaptive pooling: 1 per input element;
* max / average pooling: kernel area per output element;
* softmax / log-softmax: 3 per element (exp, sum, divide);
* interpolation: 1 per output element for nearest, 2 linear, 4 bilinear (fvcore's
  figure), 8 trilinear, 16 bicubic;
* batch / group / layer norm: fvcore's own figures (1-2 per element).

Pure data movement (cat, pad, reshape, slicing, pixel shuffle, dropout in eval mode...)
counts zero. Any op left without a handler is listed in :attr:`FlopsResult.uncounted`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import InputError
from compress.spec import ModelSpec

# fvcore op names whose count is a dense multiply-accumulate (the figure papers quote)
DENSE_OPS = ("conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum")

# fmt: off
_ELEMENTWISE = (
    "relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_",
    "silu", "silu_", "gelu", "gelu_", "hardswish", "hardswish_", "hardsigmoid",
    "hardsigmoid_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "tanh",
    "tanh_", "mish", "mish_", "softplus", "prelu", "_prelu_kernel", "threshold", "clamp",
    "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "add", "add_", "sub",
    "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "abs", "exp", "log", "log2",
    "sqrt", "rsqrt", "pow", "reciprocal", "square", "sin", "cos", "erf", "where",
    "masked_fill", "masked_fill_", "maximum", "minimum", "floor", "ceil", "round",
    "remainder", "floor_divide", "lerp", "addcmul", "addcdiv", "eq", "ne", "ge", "gt", "le",
    "lt", "bitwise_not", "__and__", "__or__", "logical_and", "logical_or", "logical_not",
    "sign",
)
_REDUCTIONS = (
    "sum", "mean", "amax", "amin", "max", "min", "var", "std", "var_mean", "norm",
    "linalg_vector_norm", "frobenius_norm", "argmax", "argmin", "logsumexp", "cumsum",
    "prod", "adaptive_max_pool2d", "adaptive_avg_pool1d", "adaptive_max_pool1d",
)
_POOLS = (
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d",
    "avg_pool2d", "avg_pool3d",
)
_SOFTMAX = (
    "softmax", "log_softmax", "_softmax", "_log_softmax",
)
# ops per output element for each interpolation kernel
_INTERPOLATION = {
    "upsample_nearest1d": 1,
    "upsample_nearest2d": 1,
    "upsample_nearest3d": 1,
    "_upsample_nearest_exact1d": 1,
    "_upsample_nearest_exact2d": 1,
    "_upsample_nearest_exact3d": 1,
    "upsample_linear1d": 2,
    "upsample_bilinear2d": 4,
    "_upsample_bilinear2d_aa": 4,
    "upsample_trilinear3d": 8,
    "upsample_bicubic2d": 16,
    "_upsample_bicubic2d_aa": 16,
    "grid_sampler": 4,
}
# no arithmetic: counted as zero on purpose (not "uncounted")
_DATA_MOVEMENT = (
    "pixel_shuffle", "pixel_unshuffle", "repeat", "flip", "roll", "expand_as", "view_as",
    "reshape_as", "clone", "feature_dropout", "feature_dropout_", "dropout_",
    "alpha_dropout", "dropout2d", "pad", "reflection_pad2d", "replication_pad2d",
    "channel_shuffle", "tile", "linspace", "scalar_tensor", "meshgrid", "numel", "dim",
    "item", "_shape_as_tensor", "lift_fresh", "zero_", "fill_", "ones_like", "empty_like",
    "new_ones", "movedim", "tensor_split", "unflatten", "index_select", "masked_select",
    "one_hot", "adaptive_avg_pool2d_backward",
)
# fmt: on


@dataclass
class FlopsResult:
    """MACs of one forward pass at one input size.

    Attributes:
        macs: everything counted (dense MACs plus the per-element ops), batch 1.
        dense_macs: conv / linear / matmul MACs only.
        by_operator: counted figure per op name.
        uncounted: ops seen in the trace that have no handler (name -> occurrences).
        params: total and trainable parameter counts.
        size: ``(H, W)`` the model was traced at.
    """

    macs: int
    dense_macs: int
    by_operator: dict[str, int]
    uncounted: dict[str, int]
    params: dict[str, int]
    size: tuple[int, int]
    breakdown: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "gmacs": self.gmacs,
            "dense_gmacs": self.dense_macs / 1e9,
            "macs": self.macs,
            "dense_macs": self.dense_macs,
            "by_operator": self.by_operator,
            "uncounted_ops": self.uncounted,
            "params": self.params,
            "breakdown": self.breakdown,
        }


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameter counts (shared tensors once).

    Returns:
        ``{"total": int, "trainable": int}`` (trainable: ``requires_grad``).
    """
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    return {
        "total": sum(p.numel() for p in seen.values()),
        "trainable": sum(p.numel() for p in seen.values() if p.requires_grad),
    }


def _shape(value) -> list[int] | None:
    return value.type().sizes() if value.isCompleteTensor() else None


def _per_element(scale: float, use_input: bool = False):
    def handle(inputs, outputs) -> int:
        shape = _shape(inputs[0] if use_input else outputs[0])
        return int(scale * math.prod(shape)) if shape is not None else 0

    return handle


def _pool(inputs, outputs) -> int:
    out = _shape(outputs[0])
    kernel = inputs[1].toIValue() if len(inputs) > 1 else None
    if out is None:
        return 0
    area = math.prod(kernel) if isinstance(kernel, (list, tuple)) and kernel else 1
    if isinstance(kernel, int):
        area = kernel * kernel
    return int(math.prod(out) * area)


def op_handles() -> dict[str, Any]:
    """The handlers added to fvcore's defaults (``aten::`` names -> handle)."""
    handles: dict[str, Any] = {}
    for name in _ELEMENTWISE:
        handles[f"aten::{name}"] = _per_element(1)
    for name in _REDUCTIONS:
        handles[f"aten::{name}"] = _per_element(1, use_input=True)
    for name in _POOLS:
        handles[f"aten::{name}"] = _pool
    for name in _SOFTMAX:
        handles[f"aten::{name}"] = _per_element(3)
    for name, per_output in _INTERPOLATION.items():
        handles[f"aten::{name}"] = _per_element(per_output)
    return handles


def _analysis(model: nn.Module, x: torch.Tensor):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**op_handles())
    analysis.set_op_handle(*[v for name in _DATA_MOVEMENT for v in (f"aten::{name}", None)])
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_flops(
    model: nn.Module,
    size: tuple[int, int],
    *,
    breakdown: bool = True,
    device: str | torch.device = "cpu",
) -> FlopsResult:
    """MACs of one ``[1, 3, H, W]`` forward pass, by operator and by module.

    Args:
        model: any ``nn.Module`` taking ``[N, 3, H, W]``; put in eval mode here.
        size: ``(H, W)``.
        breakdown: also compute :func:`flops_breakdown` rows.

    Returns:
        :class:`FlopsResult`.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, *size, device=device)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = _analysis(model, x)
            total = int(analysis.total())
            by_op = {
                k: int(v) for k, v in sorted(analysis.by_operator().items(), key=lambda kv: -kv[1])
            }
            uncounted = {k: int(v) for k, v in analysis.unsupported_ops().items()}
            rows = _breakdown_rows(model, analysis) if breakdown else []
    finally:
        model.train(was_training)
    dense = sum(v for k, v in by_op.items() if k in DENSE_OPS)
    return FlopsResult(
        macs=total,
        dense_macs=dense,
        by_operator=by_op,
        uncounted=uncounted,
        params=count_params(model),
        size=tuple(size),
        breakdown=rows,
    )


def flops_breakdown(model: nn.Module, size: tuple[int, int]) -> list[dict[str, Any]]:
    """Per-part MACs and parameters: encoder stages, decoder blocks, head.

    Returns:
        Rows ``{"module", "part", "params", "macs", "share"}`` in execution order; ops run
        in a parent's own ``forward`` (outside any child) get an ``(own forward)`` row so
        each part's rows add up to its total.
    """
    return count_flops(model, size).breakdown


def _params_of(module: nn.Module) -> int:
    return count_params(module)["total"]


def _unwrap_single(name: str, module: nn.Module) -> tuple[str, nn.Module]:
    """Skip wrappers with one child (smp ``encoder`` -> timm ``encoder.model``)."""
    children = list(module.named_children())
    while len(children) == 1 and not _params_of(module) - _params_of(children[0][1]):
        name, module = f"{name}.{children[0][0]}", children[0][1]
        children = list(module.named_children())
    return name, module


def _stages(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of a part, with Sequential / ModuleList containers opened one level."""
    out = []
    for cname, child in module.named_children():
        full = f"{name}.{cname}"
        if isinstance(child, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and len(child) > 1:
            out.extend((f"{full}.{n}", c) for n, c in child.named_children())
        else:
            out.append((full, child))
    return out


def _encoder_groups(name: str, module: nn.Module, stages):
    """Group encoder stages by output stride when timm's feature_info says where each
    stride's feature is taken; otherwise one group per stage."""
    info = getattr(module, "feature_info", None)
    try:
        taps = dict(zip(info.module_name(), info.reduction()))
    except (AttributeError, TypeError):
        return [(n.removeprefix(name + "."), [n]) for n, _ in stages]
    groups, current = [], []
    for n, _ in stages:
        current.append(n)
        short = n.removeprefix(name + ".")
        if short in taps:
            groups.append(
                (
                    f"stride {taps[short]} ({', '.join(c.removeprefix(name + '.') for c in current)})",
                    current,
                )
            )
            current = []
    if current:
        groups.append(
            (f"after last tap ({', '.join(c.removeprefix(name + '.') for c in current)})", current)
        )
    return groups


def _breakdown_rows(model: nn.Module, analysis) -> list[dict[str, Any]]:
    counts = analysis.by_module()
    total = int(analysis.total()) or 1
    modules = dict(model.named_modules())
    rows = []

    def add(label, part, names, level):
        macs = sum(int(counts.get(n, 0)) for n in names)
        params = sum(_params_of(modules[n]) for n in names)
        rows.append(
            {
                "module": label,
                "part": part,
                "level": level,
                "params": params,
                "macs": macs,
                "share": macs / total,
            }
        )
        return macs

    children = list(model.named_children())
    for top, child in children:
        top_macs = add(top, top, [top], 0)
        if not list(child.named_children()):
            continue
        inner_name, inner = _unwrap_single(top, child)
        stages = _stages(inner_name, inner)
        if len(stages) <= 1:
            continue
        if "encoder" in top:
            groups = _encoder_groups(inner_name, inner, stages)
        else:
            groups = [
                (f"{n.removeprefix(inner_name + '.')} ({type(m).__name__})", [n]) for n, m in stages
            ]
        # parts without compute or weights (Identity, activation wrappers) say nothing
        groups = [
            (label, names)
            for label, names in groups
            if any(counts.get(n, 0) or _params_of(modules[n]) for n in names)
        ]
        if len(groups) <= 1:
            continue
        inner_sum = sum(add(label, top, names, 1) for label, names in groups)
        if top_macs - inner_sum:
            rows.append(
                {
                    "module": "(own forward)",
                    "part": top,
                    "level": 1,
                    "params": 0,
                    "macs": top_macs - inner_sum,
                    "share": (top_macs - inner_sum) / total,
                }
            )
    child_sum = sum(int(counts.get(n, 0)) for n, _ in children)
    if children and total - child_sum > 0 and analysis.total():
        rows.append(
            {
                "module": "(model forward)",
                "part": "",
                "level": 0,
                "params": 0,
                "macs": int(analysis.total()) - child_sum,
                "share": (int(analysis.total()) - child_sum) / total,
            }
        )
    return rows


def size_on_disk(path: str | Path) -> int:
    """Bytes an artifact takes, companions included (OpenVINO ``.bin`` beside ``.xml``,
    ONNX external-data files).

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    total = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        total += path.with_suffix(".bin").stat().st_size
    if path.suffix == ".onnx":
        total += sum(path.parent.joinpath(f).stat().st_size for f in _onnx_external_files(path))
    return total


def _onnx_external_files(path: Path) -> set[str]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable ONNX: the file's own size is still right
        return set()
    files = set()
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and (path.parent / entry.value).is_file():
                files.add(entry.value)
    return files


def flops_subject(path: str | Path) -> tuple[ModelSpec, dict[str, int]]:
    """The model spec to count, and the size on disk of every file that holds the model.

    ``path`` is a checkpoint, an artifact with ``manifest.json`` beside it, or an export
    dir; for the last two the manifest's spec is counted (artifacts share its graph) and
    every listed artifact is sized.

    Returns:
        ``(spec, {file: bytes})``.

    Raises:
        FileNotFoundError, ValueError: nothing countable at ``path`` (named).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    if path.suffix in (".pt", ".pth"):
        from compress.models import read_checkpoint

        spec = read_checkpoint(path)["spec"]
        if spec is None:
            raise InputError(f"{path}: a plain state_dict has no model spec to count")
        return spec, {str(path): size_on_disk(path)}
    from deploy.manifest import MANIFEST_NAME, read_manifest, source_checkpoint

    directory = path if path.is_dir() else path.parent
    if not (directory / MANIFEST_NAME).is_file():
        raise InputError(
            f"{path}: no {MANIFEST_NAME} beside it to say which model it holds; "
            "give the checkpoint instead"
        )
    manifest = read_manifest(directory)
    files = {}
    for art in manifest["artifacts"]:
        f = directory / art["file"]  # read_manifest checked it stays inside directory
        if path.is_dir() or f == path:
            files[str(f)] = size_on_disk(f) if f.is_file() else None
    src = source_checkpoint(manifest) if path.is_dir() else None  # checked against its sha256
    if src is not None:
        files[str(src)] = size_on_disk(src)
    return ModelSpec.from_dict(manifest["spec"], directory / MANIFEST_NAME), files


def format_flops(result: FlopsResult, spec: ModelSpec, files: dict[str, int | None]) -> str:
    """A readable summary: params, GMACs, per-operator and per-part tables, sizes on disk."""
    h, w = result.size
    p = result.params
    lines = [
        (
            f"{spec.arch} / {spec.encoder}, {spec.classes} classes, "
            f"input 1x3x{h}x{w}"
        ),
        f"params     {p['total'] / 1e6:10.3f} M total, {p['trainable'] / 1e6:.3f} M trainable",
        (
            f"GMACs      {result.gmacs:10.3f} (conv/linear/matmul {result.dense_macs / 1e9:.3f}, "
            f"other ops {(result.macs - result.dense_macs) / 1e9:.3f})"
        ),
        "uncounted  "
        + (
            ", ".join(f"{k} x{v}" for k, v in result.uncounted.items())
            if result.uncounted
            else "none (every op in the trace has a count)"
        ),
        "",
        f"{'operator':<28}{'GMACs':>10}{'share':>8}",
    ]
    total = result.macs or 1
    for op, v in result.by_operator.items():
        lines.append(f"{op:<28}{v / 1e9:>10.4f}{v / total:>8.1%}")
    if result.breakdown:
        lines += ["", f"{'part':<48}{'params (M)':>12}{'GMACs':>10}{'share':>8}"]
        for r in result.breakdown:
            name = "  " * r["level"] + r["module"]
            lines.append(
                f"{name[:48]:<48}{r['params'] / 1e6:>12.3f}{r['macs'] / 1e9:>10.4f}"
                f"{r['share']:>8.1%}"
            )
    if files:
        lines += ["", "size on disk"]
        for f, b in files.items():
            lines.append(f"  {'missing' if b is None else f'{b / 2**20:9.2f} MB'}  {f}")
    return "\n".join(lines)
