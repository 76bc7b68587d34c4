"""``bench``: flops | latency | report | candidates.

Each command parses its arguments, calls the library and prints a summary. Errors a user
can fix print one line (no traceback unless ``--debug``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bench.candidates import BACKENDS as CANDIDATE_KEYS
from bench.candidates import DEFAULT_BACKENDS as CANDIDATE_DEFAULTS
from bench.gpu import gpu_backends
from bench.latency import MAX_RUNS
from compress.errors import InputError
from compress.options import DataKind
from compress.outdir import open_out, open_out_file, write_json_output
from deploy import runtime as registry

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: option names whole at 80 columns
    help="Measure segmentation models: MACs, latency, teacher-vs-student report.",
)

_state = {"debug": False}


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


# backend choices, suffixes and candidate keys come from deploy's registry
Backend = Enum("Backend", {n: n for n in registry.names()}, type=str)
CKPT = registry.checkpoint_backend().suffixes[0]  # .pt
ARTIFACTS = ", ".join(b.suffixes[0] for b in registry.backends()
                      if b is not registry.checkpoint_backend())  # .onnx, .xml, .engine


SizeOpt = Annotated[str | None, typer.Option(help="HxW input size; default: the model's")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(min=1, help="CPU threads, pinned for every backend; default: the physical cores"),
]
DataOpt = Annotated[Path | None, typer.Option(help="dataset root for real input images")]
SplitOpt = Annotated[str, typer.Option(help="split of --data")]
KindOpt = Annotated[DataKind, typer.Option("--data-kind", help="layout of --data")]
RunsOpt = Annotated[int, typer.Option(min=1, max=MAX_RUNS, help="timed runs per model")]
WarmupOpt = Annotated[int, typer.Option(min=0, max=MAX_RUNS,
                                        help="untimed warm-up runs per model")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
    trust_factory: Annotated[list[str] | None, typer.Option(
        "--trust-factory", help="package.module:function: run this custom model factory when "
        "a checkpoint or manifest names it (never run otherwise); repeatable")] = None,
):
    _state["debug"] = debug
    if trust_factory:
        from compress.models import trust_factories

        trust_factories(trust_factory)


def _size(size: str | None) -> tuple[int, int] | None:
    from compress.evaluate import parse_size

    return parse_size(size)


@app.command()
def flops(
    model: Annotated[Path, typer.Argument(help=f"checkpoint ({CKPT}), artifact, or export dir")],
    size: SizeOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
) -> None:
    """Parameters, GMACs by operator and by part (encoder stages, decoder, head), size on disk."""
    from bench.flops import flops_subject, format_flops
    from compress.macs import count_flops
    from compress.models import create_model

    if json_path:
        open_out_file(json_path)  # before any work
    spec, files = flops_subject(model)
    hw = _size(size) or tuple(spec.input_size)
    result = count_flops(create_model(spec, source=model), hw)
    typer.echo(format_flops(result, spec, files))
    if json_path:
        write_json_output(
            json_path,
            {"model": str(model), "spec": spec.to_dict(), **result.to_dict(), "size_on_disk": files},
        )
        typer.echo(f"json: {json_path}")


@app.command()
def latency(
    models: Annotated[
        list[Path],
        typer.Argument(
            help=f"checkpoints ({CKPT}), artifacts ({ARTIFACTS}) or export dirs; timed "
            "interleaved, ratios against the first"
        ),
    ],
    device: Annotated[Device, typer.Option(help="where the models run")] = Device.cpu,
    backend: Annotated[
        list[Backend] | None,
        typer.Option(help="keep only these backends (repeatable); default: each file's own"),
    ] = None,
    size: SizeOpt = None,
    runs: RunsOpt = 50,
    warmup: WarmupOpt = 10,
    threads: ThreadsOpt = None,
    batch: Annotated[
        list[int] | None,
        typer.Option(min=1, help="batch size(s), repeatable; figures are per image"),
    ] = None,
    data: DataOpt = None,
    split: SplitOpt = "val",
    data_kind: KindOpt = DataKind.camvid,
    precision: Annotated[
        str | None,
        typer.Option(
            help="OpenVINO execution precision (f32 keeps FP32 models from running in "
            "bf16); the other backends run artifacts as built"
        ),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
    cross_check: Annotated[bool, typer.Option(
        "--cross-check", help="also time each OpenVINO IR with benchmark_app (CPU) and each "
        "TensorRT engine with trtexec (GPU), printed beside our figure")] = False,
) -> None:
    """ms/image (median ± std, min, p90, max) after warm-up, models interleaved run by run."""
    from bench.latency import format_latency, run_latency

    if json_path:  # the path before any work; its owner when writing (no model ran: untouched)
        open_out_file(json_path, check_existing=False)
    result = run_latency(
        models,
        device=device.value,
        backends=[b.value for b in backend] if backend else None,
        size=_size(size),
        runs=runs,
        warmup=warmup,
        threads=threads,
        batches=batch or [1],
        data=data,
        split=split,
        kind=data_kind.value,
        precision=precision,
    )
    failed = [r for r in result["results"] if r.get("error") or not r.get("latency_ms")]
    if failed and len(failed) == len(result["results"]):
        # nothing ran: a user error, not a table of failures (and no --json written)
        reasons = "; ".join(f"{r['label']}: {r.get('error')}" for r in failed)
        raise InputError(f"bench latency: no model could run ({reasons})")
    if cross_check:
        from bench.crosscheck import cross_check as vendor

        st = result["settings"]
        for row in result["results"]:
            if not row.get("error") and row.get("latency_ms"):
                row["cross_check"] = vendor(row, tuple(st["size"]), st["threads"], runs)
    typer.echo(format_latency(result))
    if json_path:
        write_json_output(json_path, result)
        typer.echo(f"json: {json_path}")


@app.command()
def report(
    teacher: Annotated[Path, typer.Option(help=f"teacher checkpoint ({CKPT})")],
    student: Annotated[list[Path], typer.Option(
        help=f"student checkpoint ({CKPT}); repeat for several students timed in one run")],
    data: DataOpt = None,
    split: SplitOpt = "val",
    data_kind: KindOpt = DataKind.camvid,
    artifacts: Annotated[
        list[Path] | None, typer.Option(
            help="the student's export dir (manifest.json); with several --student, one "
            "per student in the same order")
    ] = None,
    teacher_artifacts: Annotated[
        Path | None,
        typer.Option(help="the teacher's export dir, for speed-ups on the same backend"),
    ] = None,
    size: SizeOpt = None,
    runs: RunsOpt = 20,
    warmup: WarmupOpt = 5,
    threads: ThreadsOpt = None,
    device: Annotated[
        list[Device] | None,
        typer.Option(help="devices to time on (repeatable); default: cpu, and cuda when present"),
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="score only the first N images of the split")
    ] = None,
    out: Annotated[Path, typer.Option(help="where report.md/.csv/.json and the PNGs go")] = Path(
        "bench_report"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
) -> None:
    """Teacher vs student in Markdown, CSV and JSON, with a Pareto plot and per-class IoU."""
    from bench.report import REPORT_FILES, build_report, render_markdown, write_report

    if data is None and data_kind != DataKind.synthetic:
        raise typer.BadParameter(
            "--data is required unless --data-kind synthetic", param_hint="--data"
        )
    open_out(out).check(REPORT_FILES)  # before any work
    rep = build_report(
        teacher=teacher,
        student=student,
        data=data,
        split=split,
        kind=data_kind.value,
        artifacts=artifacts,
        teacher_artifacts=teacher_artifacts,
        size=_size(size),
        runs=runs,
        warmup=warmup,
        threads=threads,
        devices=[d.value for d in device] if device else None,
        max_images=max_images,
        show=not quiet,
    )
    files = write_report(rep, out)
    if not quiet:
        typer.echo(render_markdown(rep))
    typer.echo("report: " + ", ".join(str(p) for p in files.values()))


@app.command("gate")
def gate_cmd(
    old: Annotated[Path, typer.Argument(help="baseline run (pytest --benchmark-json FILE)")],
    new: Annotated[Path, typer.Argument(help="the run to check, same way")],
    threshold: Annotated[float, typer.Option(
        help="fail when a median, as a multiple of the reference workload's, grows by "
             "more than this many percent")] = 15.0,
) -> None:
    """Speed regression gate over two tests/benchmarks runs: each check's median over the
    same run's reference workload, so a busier machine does not fail unchanged code."""
    from bench.gate import compare_runs, format_gate, slower

    rows = compare_runs(old, new)
    typer.echo(format_gate(rows, threshold / 100))
    bad = slower(rows, threshold / 100)
    if bad:
        typer.echo(f"{len(bad)} check(s) slower than {threshold:g}% against the reference: "
                   + ", ".join(r.name for r in bad), err=True)
        raise typer.Exit(1)


@app.command("gpu-check")
def gpu_check_cmd(
    checkpoint: Annotated[Path, typer.Argument(help=f"student checkpoint (best{CKPT})")],
    export_dir: Annotated[Path | None, typer.Option(
        "--export", help="its export dir (compress export --int8 --target "
        f"{gpu_backends()[0].name} [--trt])")] = None,
    data: DataOpt = None,
    split: SplitOpt = "val",
    data_kind: KindOpt = DataKind.camvid,
    runs: RunsOpt = 200,
    warmup: WarmupOpt = 50,
    out: Annotated[Path, typer.Option(help="Markdown file to write")] = Path("docs/gpu.md"),
    json_path: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
) -> None:
    """On an NVIDIA GPU: score and time PyTorch CUDA, ONNX Runtime CUDA and TensorRT FP16/INT8
    (device compute and end to end, GPU memory, energy per image); writes --out."""
    import shlex
    import sys

    from bench.gpu import format_markdown, gpu_check
    from compress.io import atomic_write_json, atomic_write_text

    result = gpu_check(checkpoint, export_dir, data=data, kind=data_kind.value, split=split,
                       runs=runs, warmup=warmup)
    text = format_markdown(result, "bench " + " ".join(map(shlex.quote, sys.argv[1:])))
    atomic_write_text(out, text)
    if json_path:
        atomic_write_json(json_path, result)
    typer.echo(text)
    typer.echo(f"written: {out}")


@app.command()
def candidates(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="zoo names (see --list) or recipe files (.yaml)"),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="print the zoo's names and stop")] = False,
    size: Annotated[str, typer.Option(help="HxW the candidates are exported and timed at")] = "192x256",
    out: Annotated[Path, typer.Option(help="where candidates.md/.csv/.json/.png go")] = Path(
        "bench_candidates"
    ),
    teacher: Annotated[
        Path | None, typer.Option(help="teacher checkpoint, timed in PyTorch (speed-ups)")
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(help=f"repeatable: {', '.join(CANDIDATE_KEYS)}; default: all but "
                     f"{', '.join(k for k in CANDIDATE_KEYS if k not in CANDIDATE_DEFAULTS)}"),
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option(min=0, help="mark the rows at or under this many ms/image")
    ] = None,
    classes: Annotated[
        int | None, typer.Option(min=1, help="class count without --teacher (default 11)")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="dataset root: train images calibrate INT8, val images "
                                  "are timed; default: the synthetic scenes")
    ] = None,
    data_kind: KindOpt = DataKind.camvid,
    calib_images: Annotated[int, typer.Option(min=1, help="INT8 calibration images")] = 8,
    runs: RunsOpt = 30,
    warmup: WarmupOpt = 5,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
) -> None:
    """Latency before training: build untrained students, export, time them interleaved."""
    from bench.candidates import DEFAULT_BACKENDS, run_candidates, write_candidates, zoo_names

    if list_:
        typer.echo("\n".join(zoo_names()))
        return
    if not names:
        raise typer.BadParameter("give zoo names or recipe files (or --list)", param_hint="NAMES")
    result = run_candidates(
        names, out, size=_size(size), teacher=teacher,
        backends=backend or DEFAULT_BACKENDS, classes=classes, data=data,
        data_kind=data_kind.value, calib_images=calib_images, runs=runs, warmup=warmup,
        threads=threads, budget_ms=budget_ms,
        log=None if quiet else (lambda m: typer.echo(m, err=True)),
    )
    files = write_candidates(result, out)
    if not quiet:
        typer.echo(files["md"].read_text())
    typer.echo("candidates: " + ", ".join(str(p) for p in files.values()))


def main() -> None:
    """Console entry point: one clear line for errors a user can fix."""
    from compress.config import suggest_key
    from compress.errors import run_cli

    run_cli(app, suggest_key)


if __name__ == "__main__":
    main()
