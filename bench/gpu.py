"""``bench gpu-check``: a student on an NVIDIA GPU, scored and timed, written to a Markdown file.

For one checkpoint and its export directory (``compress export --int8 --target tensorrt``,
with ``--trt`` where TensorRT is installed) it scores and times, at batch 1:

- PyTorch CUDA eager (f32), the checkpoint itself;
- ONNX Runtime with the CUDA execution provider, ``model.onnx`` (f32);
- TensorRT FP16 and INT8 engines, when the export built them.

Each row gets mIoU on the scored split and pixel agreement with PyTorch, device compute
only (CUDA events around the enqueue on a device-resident input, no host copies, as
``trtexec`` reports GPU compute) and end to end (resize + normalise, host->device copy,
model, device->host copy, argmax + resize back), the GPU memory it added and the energy
per image read from NVML's energy counter. A backend that cannot run here keeps its row
with the reason, so the file says what was not measured as well as what was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import (
    FORMAT_NAMES,
    Target,
    TimingSetup,
    check_device,
    make_preprocess,
    time_targets,
)
from deploy.machine import cpu_name
from deploy.runtime import backends, checkpoint_backend, source_backend


def gpu_backends(role: str = "converted") -> list:
    """The registry's backends of ``role`` that run on CUDA: ``converted`` (TensorRT: its
    engines built at export, one per precision) or ``compiled`` (AOTInductor: a package
    built for one device, recorded in its manifest entry)."""
    return [b for b in backends() if b.role == role and b.runs_on("cuda")]


def nvml_handle() -> tuple[Any, str | None]:
    """``(handle, None)`` for the current GPU, or ``(None, why not)``."""
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()), None
    except Exception as e:  # noqa: BLE001 - NVML is optional: say why it is missing
        return None, f"NVML unavailable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def energy_per_image(predict, images: np.ndarray, handle, runs: int) -> float | None:
    """Millijoules per image over ``runs`` end-to-end calls, from NVML's total-energy
    counter (Volta and newer); None where the counter is not supported."""
    import pynvml
    import torch

    try:
        e0 = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError:
        return None
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    while n < runs or time.perf_counter() - t0 < 1.0:  # the counter updates every few ms
        predict(images)
        n += images.shape[0]
    torch.cuda.synchronize()
    return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - e0) / n


def _targets(checkpoint: Path, export_dir: Path | None) -> tuple[list[Target], list[dict]]:
    """What to run, and rows for what the export does not hold (with the reason)."""
    ckpt, source = checkpoint_backend(), source_backend()
    targets = [Target(f"{ckpt.title} CUDA eager", checkpoint, ckpt.name, None,
                      {"artifact_precision": ckpt.builds[0]})]
    missing = []
    if export_dir is None:
        missing.append({"label": f"{source.title} CUDA", "backend": source.name,
                        "error": "no export dir given"})
        return targets, missing
    from deploy.manifest import read_manifest

    manifest = read_manifest(export_dir)
    engines = gpu_backends()
    graph = next((a for a in manifest["artifacts"]
                  if a.get("target") in {b.name for b in engines}), None)
    files = {(a["backend"], a["precision"]): a["file"] for a in manifest["artifacts"]}
    targets.append(Target(f"{source.title} CUDA", export_dir / files[(source.name, "f32")],
                          source.name, None, {"artifact_precision": "f32"}))
    for b in engines:
        for precision in b.builds:
            label = f"{b.label} {precision.upper()}"
            if (b.name, precision) in files:
                targets.append(Target(label, export_dir / files[(b.name, precision)], b.name,
                                      None, {"artifact_precision": precision}))
            else:
                why = b.available("cuda") or "the export has no such engine (--trt)"
                missing.append({"label": label, "backend": b.name,
                                "error": f"not built: {why}"})
    for b in gpu_backends("compiled"):  # AOTInductor: a package compiled for CUDA
        label = f"{b.label} CUDA"
        built = next((a for a in manifest["artifacts"] if a["backend"] == b.name
                      and (a.get(b.name) or {}).get("device") == "cuda"), None)
        if built is not None:
            targets.append(Target(label, export_dir / built["file"], b.name, None,
                                  {"artifact_precision": built["precision"]}))
        else:
            missing.append({"label": label, "backend": b.name, "error": "not built: the "
                            f"export has no {b.label} package for CUDA (--aoti --aoti-device "
                            "cuda)"})
    if graph is not None:  # the INT8 graph TensorRT builds from, scored on the CPU at export
        missing.append({"label": "int8_graph", "file": graph["file"],
                        **{k: graph["verification"].get(k)
                           for k in ("miou", "miou_f32", "agreement", "images")},
                        "budget": graph["quantization"].get("budget")})
    return targets, missing


def _score(runtimes: list[tuple[dict, Any]], batches, class_names, ignore_index) -> None:
    """mIoU on the labelled batches and pixel agreement with the first (PyTorch) runtime."""
    from deploy.export import Comparison

    ref = runtimes[0][1]
    for row, rt in runtimes:
        cmp = Comparison(class_names, ignore_index)
        for images, masks in batches:
            cmp.update(ref.predict(images), rt.predict(images), masks)
        res = cmp.result()
        row.update(miou=res["miou"], agreement=res["agreement"])


def gpu_check(checkpoint: str | Path, export_dir: str | Path | None = None, *,
              data: str | Path | None = None, kind: str = "camvid", split: str = "val",
              runs: int = 200, warmup: int = 50, score_images: int | None = None
              ) -> dict[str, Any]:
    """Score and time a checkpoint and its GPU artifacts on this machine's NVIDIA GPU.

    Raises:
        ValueError: no CUDA GPU visible (one line, said at once).
    """

    from compress.data import split_images
    from compress.models import load_model

    check_device("cuda")
    checkpoint = Path(checkpoint)
    export_dir = Path(export_dir) if export_dir else None
    _, spec = load_model(checkpoint, return_spec=True)
    size = tuple(spec.input_size)
    targets, missing = _targets(checkpoint, export_dir)

    dkind = kind if data else "synthetic"
    ds = split_images(dkind, str(data) if data else None, split, size=size, mean=spec.mean,
                      std=spec.std, ignore_index=spec.ignore_index, count=score_images)
    n = len(ds) if score_images is None else min(score_images, len(ds))
    items = [ds[i] for i in range(n)]
    batches = [(np.stack([it["image"].numpy() for it in items[i:i + 8]]),
                np.stack([it["mask"].numpy() for it in items[i:i + 8]])) for i in range(0, n, 8)]
    frames = [np.ascontiguousarray(np.moveaxis(
        (it["image"].numpy() * np.asarray(spec.std)[:, None, None]
         + np.asarray(spec.mean)[:, None, None]).clip(0, 1) * 255, 0, -1).astype(np.uint8))
        for it in items[:8]]

    run = time_targets(targets, "cuda", TimingSetup(None, size, frames, "scored images"),
                       runs=runs, warmup=warmup)
    rows = run.dicts()
    ok = [(row, e["runtime"]) for row, e in zip(rows, run.loaded) if e["runtime"] is not None]
    if ok and ok[0][1].backend == checkpoint_backend().name:
        _score(ok, batches, spec.class_names, spec.ignore_index)
    handle, nvml_note = nvml_handle()
    if handle is not None:
        for row, rt in ok:
            pre = make_preprocess(frames, size, spec.mean, spec.std, 1)
            row["energy_mj_per_image"] = energy_per_image(rt.predict, pre(0), handle, runs)
    graph = next((m for m in missing if m["label"] == "int8_graph"), None)
    for m in missing:
        if m is not graph:
            rows.append({**m, "precision": None, "batch": 1})
    return {
        "checkpoint": str(checkpoint),
        "export_dir": str(export_dir) if export_dir else None,
        "size": list(size),
        "data": f"{dkind} {split}, {n} images" + ("" if data else " (synthetic scenes)"),
        "runs": runs,
        "warmup": warmup,
        "gpu": run.hardware["gpu"],
        "host": cpu_name(),
        "versions": _versions(),
        "nvml": nvml_note or "energy from nvmlDeviceGetTotalEnergyConsumption",
        "rows": rows,
        "int8_graph": graph,
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    cuda = [p for b in backends() if b.runs_on("cuda") for p in b.packages]
    for name in (*cuda, "nvidia-ml-py"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _ms(stats: dict | None) -> str:
    return f"{stats['median']:.3f} ± {stats['std']:.3f}" if stats else "n/a"


def format_markdown(result: dict[str, Any], command: str) -> str:
    """``docs/gpu.md``: the machine, the command, one table, what could not run."""
    g = result["gpu"]
    v = result["versions"]
    lines = [
        "# GPU check",
        "",
        f"Written by `{command}` (`scripts/gpu_check.sh`).",
        "",
        (f"- GPU: {g.get('name')} ({g.get('memory_gb', '?')} GiB, compute capability "
        f"{g.get('compute_capability')}), driver "
        f"{g.get('driver', '?')}, CUDA {g.get('cuda')}; host CPU {result['host']}"),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        (f"- model: `{Path(result['checkpoint']).name}` at {result['size'][0]}x{result['size'][1]},"
        f" batch 1; scored on {result['data']}"),
        (f"- timing: {result['warmup']} warm-up + {result['runs']} timed runs per model, models "
        "interleaved run by run; median ± std in ms per image"),
        ("- compute = CUDA events around the model's enqueue on an input already on the GPU, "
        "output left there (like `trtexec`'s GPU compute); end to end = resize + normalise, "
        "host->device copy, model, device->host copy, argmax + resize back"),
        f"- energy: {result['nvml']}, over at least {result['runs']} end-to-end calls (and 1 s)",
        "",
        ("| model | backend | precision | mIoU | agreement with PyTorch | compute ms | "
        "end-to-end ms | GPU memory MB | energy mJ/image |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in result["rows"]:
        if r.get("error") or not r.get("latency_ms"):
            lines.append(f"| {r['label']} | {FORMAT_NAMES.get(r['backend'], r['backend'])} | | "
                         f"| | could not run | | | |")
            notes.append(f"- {r['label']}: {r.get('error')}")
            continue
        miou = r.get("miou")
        agree = r.get("agreement")
        energy = r.get("energy_mj_per_image")
        mem = (r.get("memory") or {}).get("gpu_mem_mb")
        compute = _ms(r.get("compute_ms")) if r.get("compute_ms") else "n/a (copies included)"
        lines.append(
            f"| {r['label']} | {FORMAT_NAMES.get(r['backend'], r['backend'])} | "
            f"{r.get('precision')} | {'n/a' if miou is None else f'{miou * 100:.2f}'} | "
            f"{'n/a' if agree is None else f'{agree * 100:.2f} %'} | {compute} | "
            f"{_ms(r.get('end_to_end_ms'))} | {'n/a' if mem is None else f'{mem:.0f}'} | "
            f"{'n/a' if energy is None else f'{energy:.1f}'} |")
        if r.get("compute_note"):
            notes.append(f"- {r['label']}: {r['compute_note']}")
    graph = result.get("int8_graph")
    if graph and graph.get("miou") is not None:
        lines += ["", (f"TensorRT INT8 graph (`{graph['file']}`, signed symmetric Q/DQ), scored on "
                  f"the CPU with ONNX Runtime at export on {graph['images']} images "
                  f"(budget against {graph['budget']}): mIoU {graph['miou'] * 100:.2f} vs f32 "
                  f"{graph['miou_f32'] * 100:.2f} (drop "
                  f"{(graph['miou_f32'] - graph['miou']) * 100:.2f} points), pixel agreement "
                  f"{graph['agreement'] * 100:.2f} %.")]
    if notes:
        lines += ["", "Not measured, and why:", "", *notes]
    return "\n".join(lines) + "\n"
