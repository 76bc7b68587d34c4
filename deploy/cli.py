"""deploy's commands: ``export`` (a checkpoint -> verified ONNX [+ INT8, OpenVINO IR,
TensorRT engines]).

The command only maps its options onto an :class:`~deploy.pipeline.ExportConfig`;
:func:`deploy.pipeline.validate_config` owns every check on them.

``commands`` is mounted into the ``compress`` console command by :mod:`segcompress.cli`
beside compress's own commands. The heavy backends (nncf, openvino, tensorrt) are
imported only when the command runs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from compress.options import DataKind
from deploy.pipeline import INT8_METHODS, TARGETS, ExportConfig, export_checkpoint
from deploy.quantize import CALIB_STATS, PRESETS

# the choices come from the tables that validate them, the defaults from ExportConfig:
# each option is defined here once, and checked once (deploy.pipeline.validate_config)
D = ExportConfig()
Preset = Enum("Preset", {p: p for p in PRESETS}, type=str)
Target = Enum("Target", {t: t for t in TARGETS}, type=str)
Int8Method = Enum("Int8Method", {m: m for m in INT8_METHODS}, type=str)
CalibStat = Enum("CalibStat", {c: c for c in CALIB_STATS}, type=str)


def export(
    checkpoint: Annotated[Path, typer.Argument(help="segcompress checkpoint (best.pt)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="export directory, new or empty")],
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="no-op, kept for old scripts: the f32 ONNX is always written")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 QDQ ONNX (NNCF; see --int8-method)")]
    = D.int8,
    openvino: Annotated[bool, typer.Option("--openvino", help="OpenVINO IR too")] = D.openvino,
    trt: Annotated[bool, typer.Option("--trt", help="TensorRT engines (NVIDIA GPU)")] = D.trt,
    aoti: Annotated[bool, typer.Option(
        "--aoti", help="AOTInductor package model.pt2 (torch.export + Inductor; needs g++)")]
    = D.aoti,
    aoti_device: Annotated[str, typer.Option(help="device the .pt2 is compiled for: cpu or "
                                                  "cuda")] = D.aoti_device,
    executorch: Annotated[bool, typer.Option(
        "--executorch", help="ExecuTorch program model.pte (XNNPACK; INT8 too with --int8; "
                             "the executorch extra)")] = D.executorch,
    litert: Annotated[bool, typer.Option(
        "--litert", help="LiteRT model.tflite (litert-torch in .venv-litert; INT8 too with "
                         "--int8; the litert extra runs it)")] = D.litert,
    e2e: Annotated[str | None, typer.Option(
        "--e2e", help="HxW of the camera frames: also the frame-to-map graphs model_e2e.onnx "
                      "(+ INT8 / OpenVINO forms as asked): uint8 frames in, class map out")]
    = None,
    size: Annotated[str | None, typer.Option(help="HxW (multiples of 32); default: spec")] = None,
    batch: Annotated[int, typer.Option(min=1, help="batch of the example input / fixed batch")]
    = D.batch_size,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch")]
    = D.dynamic_batch,
    dynamic_spatial: Annotated[bool, typer.Option("--dynamic-spatial/--static-spatial")]
    = D.dynamic_spatial,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = D.opset,
    argmax: Annotated[bool, typer.Option("--argmax", help="argmax in the graph: ids out")]
    = D.argmax,
    calib_data: Annotated[Path | None, typer.Option(help="dataset root for calibration and "
                                                       "verification; none: synthetic")] = None,
    data_kind: Annotated[DataKind | None, typer.Option(help="default: camvid with "
                                                          "--calib-data, else synthetic")] = None,
    calib_images: Annotated[Path | None, typer.Option(
        help="folder of unlabelled images to calibrate INT8 on; every --holdout-every-th is "
             "held back to check the budget against the f32 model's predictions")] = None,
    holdout_every: Annotated[int, typer.Option(help="with --calib-images: hold back every "
                                                    "N-th image")] = D.holdout_every,
    target: Annotated[Target, typer.Option(
        help="INT8 graph for: cpu, or tensorrt (signed symmetric Q/DQ, scored here on the "
             "CPU; implied by --trt)")] = Target[D.target],
    calib_split: Annotated[str, typer.Option(help="split calibrated on")] = D.calib_split,
    calib_size: Annotated[int, typer.Option(min=1, help="calibration images")] = D.calib_size,
    val_split: Annotated[str, typer.Option(help="split verified and scored on")] = D.val_split,
    val_size: Annotated[int | None, typer.Option(min=1, help="verification images; default all")]
    = D.val_size,
    max_drop: Annotated[float, typer.Option(min=0, help="allowed INT8 mIoU drop, in points")]
    = D.max_drop,
    int8_method: Annotated[Int8Method, typer.Option(
        help="INT8 quantizer: nncf, or modelopt (NVIDIA ModelOpt's ONNX PTQ, TensorRT graphs "
             "only, needs the modelopt extra)")] = Int8Method[D.int8_method],
    preset: Annotated[Preset | None, typer.Option(help="NNCF preset; default mixed, "
                                                     "performance for TensorRT")] = None,
    calib_stat: Annotated[CalibStat, typer.Option(help="activation range statistic")]
    = CalibStat[D.calib_stat],
    keep_float: Annotated[list[str] | None, typer.Option(help="ONNX node kept in float "
                                                            "(repeat)")] = None,
    accuracy_control: Annotated[bool, typer.Option(
        "--accuracy-control/--no-accuracy-control",
        help="over budget: return sensitive layers to float (else fail)")] = D.accuracy_control,
    min_agreement: Annotated[float, typer.Option(help="required pixel agreement, 0-1")]
    = D.min_agreement,
    trt_max_batch: Annotated[int, typer.Option(help="TensorRT profile max batch")]
    = D.trt_max_batch,
    trt_workspace: Annotated[float, typer.Option(help="TensorRT workspace, GiB")]
    = D.trt_workspace_gib,
    trt_timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a full --out")]
    = D.overwrite,
) -> None:
    """Export a checkpoint: ONNX (verified against PyTorch), optionally INT8, OpenVINO,
    TensorRT, AOTInductor, ExecuTorch, LiteRT, and frame-to-map graphs (--e2e)."""
    from compress.evaluate import parse_size
    from deploy.e2e import parse_frame_size

    del onnx  # always written: the flag only states it (see its help)
    cfg = ExportConfig(
        size=parse_size(size), batch_size=batch, dynamic_batch=dynamic_batch,
        dynamic_spatial=dynamic_spatial, opset=opset, argmax=argmax, data=calib_data,
        data_kind=data_kind.value if data_kind else None, val_split=val_split, val_size=val_size,
        calib_split=calib_split, calib_size=calib_size, int8=int8, openvino=openvino, trt=trt,
        aoti=aoti, aoti_device=aoti_device, executorch=executorch, litert=litert, e2e=parse_frame_size(e2e) if e2e else None,
        preset=preset.value if preset else None, calib_stat=calib_stat.value, max_drop=max_drop,
        float_layers=tuple(keep_float or ()), accuracy_control=accuracy_control,
        min_agreement=min_agreement, trt_max_batch=trt_max_batch, trt_workspace_gib=trt_workspace,
        trt_timing_cache=trt_timing_cache, threads=threads, overwrite=overwrite,
        target=target.value, calib_images=calib_images, holdout_every=holdout_every,
        int8_method=int8_method.value)
    manifest = export_checkpoint(checkpoint, out, cfg, log=typer.echo)  # validates cfg first
    typer.echo(format_artifacts(manifest))
    typer.echo(f"manifest: {out / 'manifest.json'}")


def format_artifacts(manifest: dict) -> str:
    """A table: file, backend, precision, agreement with the reference, mIoU; for a
    multi-task export also each dense output's RMSE against the depth labels (n/a
    without them) and against the reference's output."""
    def pct(v):
        return "n/a" if v is None else f"{v * 100:.2f}"

    def num(v):
        return "n/a" if v is None else f"{v:.4g}"

    dense = [o["name"] for o in (manifest["artifacts"] or [{}])[0].get("outputs", [])[1:]]
    head = f"{'file':<20}{'backend':<13}{'precision':<11}{'agreement %':>12}{'mIoU':>8}"
    rows = [head + "".join(f"{n + ' RMSE':>14}{'vs ref':>11}" for n in dense)]
    for a in manifest["artifacts"]:
        v = a.get("verification", {})
        outs = v.get("outputs", {})
        rows.append(f"{a['file']:<20}{a['backend']:<13}{a['precision']:<11}"
                    f"{pct(v.get('agreement')):>12}{pct(v.get('miou')):>8}"
                    + "".join(f"{num(outs.get(n, {}).get('rmse')):>14}"
                              f"{num(outs.get(n, {}).get('rmse_vs_reference')):>11}"
                              for n in dense))
    rows += [f"left out: {x['file']}: {x['reason']}" for x in manifest.get("left_out", [])]
    return "\n".join(rows)


commands = typer.Typer()
commands.command("export")(export)
