"""Size on disk and the ``bench flops`` summary of a segmentation model.

The counting itself is :mod:`compress.macs` (the one MAC counter, shared with the
comparison study and ``compress prune``); its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import InputError
from compress.macs import (
    DENSE_OPS,
    GMACS_DEFINITION,
    FlopsResult,
    count_flops,
    count_gmacs,
    count_params,
    flops_breakdown,
    op_handles,
)
from compress.spec import ModelSpec
from deploy.runtime import SUFFIXES, checkpoint_backend, get_backend

__all__ = [
    "DENSE_OPS",
    "GMACS_DEFINITION",
    "FlopsResult",
    "count_flops",
    "count_gmacs",
    "count_params",
    "flops_breakdown",
    "flops_subject",
    "format_flops",
    "op_handles",
    "size_on_disk",
]


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
    backend = SUFFIXES.get(path.suffix.lower())
    if backend is not None:  # the weights beside an IR, an ONNX model's external data
        total += sum(p.stat().st_size for p in get_backend(backend).companions(path))
    return total


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
    if path.suffix in checkpoint_backend().suffixes:
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
        f"({GMACS_DEFINITION})",
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
