"""``compress pseudo-label`` (registered by :mod:`compress.cli`).

``compress compare`` measures, so it lives beside bench (:mod:`bench.cli_study`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _parse_class_thresholds(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        name, sep, value = item.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            name = ""
        if not sep or not name:
            raise typer.BadParameter(f"--class-threshold {item!r}: expected NAME=VALUE, e.g. Pole=0.5")
    return out


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--scales {text!r}: expected numbers like 0.75,1,1.25") from None


def pseudo_label_cmd(
    teacher: Annotated[list[Path], typer.Option(
        "--teacher", help="teacher checkpoint or transformers model folder; repeat for an "
        "ensemble")],
    images: Annotated[Path, typer.Option(help="folder of images (labelled or not)")],
    out: Annotated[Path, typer.Option(help="output dataset folder (folder layout)")],
    teacher_weight: Annotated[list[float] | None, typer.Option(
        "--teacher-weight", help="weight of each --teacher, in order (normalised); default equal")] = None,
    threshold: Annotated[float, typer.Option(help="keep pixels whose averaged probability is at least this")] = 0.7,
    class_threshold: Annotated[list[str] | None, typer.Option(
        "--class-threshold", help="NAME=VALUE per-class threshold; repeatable")] = None,
    tta_flip: Annotated[bool, typer.Option("--tta-flip", help="also average the flipped image")] = False,
    scales: Annotated[str, typer.Option(help="input scales to average, e.g. 0.75,1,1.25")] = "1",
    class_map: Annotated[Path | None, typer.Option(help="YAML: classes (output names, in order) + map (teacher class -> student class, {class: fraction} or ignore)")] = None,
    size: Annotated[str | None, typer.Option(help="HxW the teachers see; default their input size")] = None,
    ignore_index: Annotated[int | None, typer.Option(help="value of unsure pixels; default the teacher's")] = None,
    truth: Annotated[Path | None, typer.Option(
        help="ground-truth masks to score kept pixels and each teacher against (weak members are warned about)")] = None,
    copy: Annotated[bool, typer.Option("--copy", help="copy images instead of linking them")] = False,
    depth: Annotated[Path | None, typer.Option(
        help="depth maps named like the images (<stem>.png mm / .npy m): linked into OUT/depth")] = None,
    previews: Annotated[int, typer.Option(min=0, help="preview pictures to write")] = 4,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Label a folder of images with confident teacher predictions (for data.extra_train).

    A rerun with the same settings labels only the images not done yet; under torchrun
    the images are split across the ranks."""
    from compress.evaluate import parse_size
    from compress.pseudo import format_summary, pseudo_label

    stats = pseudo_label(teacher, images, out, threshold=threshold,
                         class_thresholds=_parse_class_thresholds(class_threshold),
                         tta_flip=tta_flip, scales=_parse_scales(scales), class_map=class_map,
                         size=parse_size(size), ignore_index=ignore_index, truth=truth,
                         copy_images=copy, previews=previews, device=device, show=not quiet,
                         teacher_weights=teacher_weight, depth=depth)
    if not stats:  # a torchrun rank other than 0: rank 0 merged and reports
        return
    typer.echo(format_summary(stats))
    extra = ", depth: files" if stats["depth_maps"] else ""
    typer.echo(f"dataset: {out} (use as data.extra_train: [{{kind: folder, root: {out}{extra}}}])")


def register(app: typer.Typer) -> None:
    app.command("pseudo-label")(pseudo_label_cmd)
