"""The teacher-vs-student report: accuracy, cost and speed of every model and format.

One row per model, format and device: teacher FP32, student FP32, and each artifact of
the student's export dir (``manifest.json``), with params, GMACs, size on disk, mIoU and
its change from the teacher, per-class IoU changes, latency, speed-ups and peak memory.
A row that cannot run here stays in the table and says why. Written as Markdown, CSV and
JSON, with a Pareto plot (mIoU vs latency) and a per-class IoU chart.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.flops import size_on_disk
from bench.latency import FORMAT_NAMES, Target, prepare_timing, time_targets
from compress.devices import check_device, cuda_missing
from compress.errors import InputError
from compress.evidence import ImageCounter, ImageCounts, paired_bootstrap
from compress.macs import GMACS_DEFINITION, count_flops
from compress.outdir import open_out
from compress.spec import ModelSpec
from deploy.metadata import is_multi_output
from deploy.runtime import backends, canonical_precision, checkpoint_backend, get_backend

CHECKPOINT = checkpoint_backend().name  # the teacher's own row: its checkpoint
COLLAPSE_POINTS = 10.0  # a class losing this many IoU points vs the teacher is flagged
FP_PRECISIONS = ("f32", "fp32", "fp16", "f16", "bf16")


# ---------------------------------------------------------------- accuracy


def evaluate_runtime(
    runtime, dataset, class_names: list[str], ignore_index: int, batch_size: int = 1,
    per_image: ImageCounter | None = None,
) -> dict[str, Any]:
    """mIoU and per-class IoU of ``runtime.predict`` on ``dataset`` (logits or class ids),
    by :func:`compress.metrics.score_predictor` (outputs at another size than the masks
    are resized: bilinear logits, nearest ids, the same rule as ``compress eval``);
    ``per_image`` also collects the per-image counts of the same predictions.

    A multi-task runtime (more than one output) whose dataset items carry ``"depth"``
    is scored in the same pass on its dense outputs too: ``result["depth"]`` is
    ``{output name: compress.metrics.DepthMeter.compute()}`` (RMSE, AbsRel, delta1...)."""
    from compress.metrics import score_predictor

    multi = len(getattr(runtime, "output_names", ())) > 1
    meters: dict[str, Any] = {}
    labels: dict[str, np.ndarray | None] = {"depth": None}

    def batches():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            if multi and "depth" in items[0]:
                labels["depth"] = np.stack([it["depth"].numpy() for it in items])
            yield (np.stack([it["image"].numpy() for it in items]),
                   np.stack([it["mask"].numpy() for it in items]),
                   [it["name"] for it in items])

    def predict(images: np.ndarray) -> np.ndarray:
        import torch

        from compress.metrics import DepthMeter

        (_, seg), *rest = runtime.run_outputs(images).items()
        target = labels["depth"]
        for name, pred in rest:
            if target is not None and pred.shape == target.shape:
                meters.setdefault(name, DepthMeter()).update(
                    torch.from_numpy(pred), torch.from_numpy(target))
        return seg

    res = score_predictor(predict if multi else runtime.predict, batches(), class_names,
                          ignore_index, per_image=per_image)[0]
    if meters:
        res["depth"] = {name: m.compute() for name, m in meters.items()}
    return res


def _dataset(data, split: str, kind: str, size, spec: ModelSpec, max_images: int | None,
             depth: str = "none"):
    import torch

    from compress.data import split_images

    ds = split_images(
        kind,
        str(data) if data else None,
        split,
        size=tuple(size),
        mean=spec.mean,
        std=spec.std,
        ignore_index=spec.ignore_index,
        count=max_images,
        depth=depth,
    )
    if max_images and len(ds) > max_images:
        sub = torch.utils.data.Subset(ds, range(max_images))
        sub.class_names, sub.ignore_index = ds.class_names, ds.ignore_index
        return sub
    return ds


# ---------------------------------------------------------------- rows


def _read_spec(path: Path) -> ModelSpec:
    from compress.models import read_checkpoint

    spec = read_checkpoint(path)["spec"]
    if spec is None:
        raise InputError(
            f"{path}: a plain state_dict without a model spec; give a segcompress checkpoint"
        )
    return spec


def _student_name(path: Path) -> str:
    """A student's label in a report of several: the file's stem, or its run's name for a
    run's ``checkpoints/best.pt`` / ``last.pt``."""
    if path.stem in ("best", "last") and path.parent.name == "checkpoints":
        run = path.parent.parent
        return run.parent.name if run.parent.name not in ("", ".") else run.name
    return path.stem


def _as_paths(value: Path | str | Sequence[Path | str] | None) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _artifact_targets(directory: Path, role: str, source: Path,
                      name: str | None = None) -> list[Target]:
    """One target per artifact of an export dir; ``name`` labels a student among several
    (default: its role). The export must have been made from ``source`` (the ``--student``
    or ``--teacher`` file its rows are reported as): its manifest's ``source_sha256``.

    Raises:
        InputError: an export of another checkpoint, naming both files.
    """
    from deploy.manifest import read_manifest, sha256_file

    manifest = read_manifest(directory)
    actual = sha256_file(source)
    if manifest["source_sha256"] != actual:
        option = "--artifacts" if role == "student" else "--teacher-artifacts"
        raise InputError(f"{option} {directory} was exported from "
                         f"{manifest['source_checkpoint']} (sha256 "
                         f"{str(manifest['source_sha256'])[:12]}...), not from --{role} "
                         f"{source} (sha256 {actual[:12]}...): its rows would be reported as "
                         f"that {role}'s; give the export of that file")
    targets = []
    for art in manifest["artifacts"]:
        backend, prec = art["backend"], str(art["precision"])
        # OpenVINO runs FP32 IR in bf16 by default on CPUs with BF16/AMX: force f32 so the
        # FP32 row is FP32 (the precision column shows what ran)
        ask = ("f32" if get_backend(backend).sets_precision and prec in ("f32", "fp32")
               else None)
        label = f"{name or role} {FORMAT_NAMES.get(backend, backend)} {prec}"
        frame = {}
        if art.get("frame_size"):  # a frame-to-map graph (compress export --e2e)
            label += " frame→map"
            verified = art.get("verification") or {}
            frame = {"frame_to_map": True, "frame_size": art["frame_size"],
                     "export_miou": verified.get("miou"), "export_images": verified.get("images")}
        targets.append(
            Target(
                label,
                directory / art["file"],
                backend,
                ask,
                {
                    "role": role,
                    "format": FORMAT_NAMES.get(backend, backend),
                    "artifact_precision": prec,
                    "file": art["file"],
                    "cost_key": name or role,
                    **frame,
                },
            )
        )
    return targets


def _dedupe_labels(targets: list[Target]) -> None:
    seen: dict[str, int] = {}
    for t in targets:
        n = seen.get(t.label, 0)
        seen[t.label] = n + 1
        if n:
            t.label = f"{t.label} ({t.info.get('file', n + 1)})"


def build_report(
    *,
    teacher: Path,
    student: Path | Sequence[Path],
    data: Path | None,
    split: str = "val",
    kind: str = "camvid",
    artifacts: Path | Sequence[Path] | None = None,
    teacher_artifacts: Path | None = None,
    size: tuple[int, int] | None = None,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
    devices: list[str] | None = None,
    max_images: int | None = None,
    show: bool = False,
) -> dict[str, Any]:
    """Measure every model and format and return the report as a plain dict.

    Args:
        teacher, student: segcompress checkpoints; ``student`` may be several, all timed
            in the same interleaved run (each labelled by its file or run name).
        data, split, kind: where accuracy and the timing frames come from
            (``kind="synthetic"`` needs no data).
        artifacts: the student's export dir (``manifest.json``), or one per student in
            the students' order; ``teacher_artifacts`` the teacher's, for speed-ups on the
            same backend.
        size: ``(H, W)``; default the student's input size.
        runs, warmup: timed and untimed interleaved rounds per device.
        threads: CPU threads (pinned); default the physical cores.
        devices: default ``["cpu"]`` plus ``"cuda"`` when a GPU is visible.
        max_images: score on the first N images of the split only.

    Returns:
        ``{"settings", "hardware", "classes", "rows", "notes"}`` (see :func:`write_report`).

    Raises:
        ValueError, FileNotFoundError, DataError, ModelError: unusable inputs (named).
    """
    import torch

    from compress.data import split_has_depth
    from compress.models import create_model

    teacher = Path(teacher)
    students, exports = _as_paths(student), _as_paths(artifacts)
    if not students:
        raise InputError("--student: give at least one student checkpoint")
    if len(exports) > len(students):
        raise InputError(f"--artifacts: {len(exports)} export dirs for {len(students)} "
                         "student(s); give one per student, in the order of --student")
    names = ["student"] if len(students) == 1 else [_student_name(p) for p in students]
    if len(set(names)) < len(names) or (len(names) > 1 and "teacher" in names):
        raise InputError(f"--student: two models share a name (teacher, {', '.join(names)}); "
                         "give files with different names")
    t_spec = _read_spec(teacher)
    s_specs = [_read_spec(p) for p in students]
    size = tuple(size or s_specs[0].input_size)
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for d in devices:
        if d.startswith("cuda"):
            check_device(d)

    def log(msg):
        if show:
            print(msg, flush=True)

    log(f"counting MACs at {size[0]}x{size[1]}")
    cost = {}
    for key, spec, path in (("teacher", t_spec, teacher), *zip(names, s_specs, students)):
        fl = count_flops(create_model(spec, source=path), size, breakdown=False)
        cost[key] = {
            "params": fl.params["total"],
            "gmacs": fl.gmacs,
            "dense_gmacs": fl.dense_macs / 1e9,
            "uncounted_ops": fl.uncounted,
        }

    ckpt = checkpoint_backend()
    targets = [
        Target(
            f"{name} {ckpt.label} {ckpt.builds[0]}",
            path,
            ckpt.name,
            None,
            {
                "role": role,
                "format": ckpt.label,
                "artifact_precision": ckpt.builds[0],
                "file": path.name,
                **({} if role == "teacher" else {"cost_key": name}),
            },
        )
        for role, name, path in [("teacher", "teacher", teacher),
                                 *(("student", n, p) for n, p in zip(names, students))]
    ]
    if teacher_artifacts:
        targets += _artifact_targets(Path(teacher_artifacts), "teacher", teacher)
    for name, path, directory in zip(names, students, exports):
        targets += _artifact_targets(directory, "student", path,
                                     None if len(names) == 1 else name)
    _dedupe_labels(targets)

    setup = prepare_timing(size, threads=threads, data=data, split=split, kind=kind)
    threads = setup.threads
    class_names: list[str] | None = None
    hardware, rows, datasets = {}, [], {}
    for device in devices:
        dev_targets = [t for t in targets if get_backend(t.backend).runs_on(device)]
        log(f"[{device}] loading {len(dev_targets)} models")
        log(f"[{device}] timing: {warmup} warm-up + {runs} interleaved runs")
        run = time_targets(dev_targets, device, setup, runs=runs, warmup=warmup)
        hardware[device] = run.hardware
        for entry, trow in zip(run.loaded, run.dicts()):
            t, rt = entry["target"], entry["runtime"]
            row = _row(t, device, cost, timing=trow, error=trow["error"])
            if rt is not None and row.status == "ok" and rt.spec.frame_size is not None:
                row.accuracy_note = _frame_note(t.info)
            elif rt is not None and row.status == "ok":
                spec = rt.spec
                # a multi-task model is scored on the split's depth too, where it has some
                depth = (split_has_depth(kind, str(data) if data else None, split)
                         if is_multi_output(spec) else "none")
                key = (tuple(spec.mean), tuple(spec.std), spec.ignore_index, depth)
                if key not in datasets:
                    datasets[key] = _dataset(data, split, kind, size, spec, max_images, depth)
                ds = datasets[key]
                class_names = class_names or list(ds.class_names)
                if spec.classes != len(ds.class_names):
                    row.accuracy_note = (
                        f"mIoU n/a: model has {spec.classes} classes, "
                        f"the data {len(ds.class_names)}"
                    )
                else:
                    log(f"[{device}] scoring {t.label} on {len(ds)} images")
                    try:
                        counter = ImageCounter(t.label)
                        res = evaluate_runtime(rt, ds, list(ds.class_names), ds.ignore_index,
                                               per_image=counter)
                        row.per_image = counter.counts()
                        row.miou = res["miou"]
                        row.per_class_iou = res["per_class_iou"]
                        row.set_depth(res.get("depth"))
                    except Exception as e:  # noqa: BLE001 - the row keeps its latency, says why
                        row.accuracy_note = f"scoring failed: {str(e).splitlines()[0]}"
            rows.append(row)
        del run
    # a model no requested device could run still gets its row, saying why: on the device
    # its backend runs on by default
    shown = {r.model for r in rows}
    for t in targets:
        if t.label in shown:
            continue
        b = get_backend(t.backend)
        dev = b.default_device()
        why = (f"{b.label}: runs on the CPU here; add --device cpu" if dev == "cpu"
               else cuda_missing(b.label, dev) or f"{b.label}: GPU only; add --device {dev}")
        rows.append(_row(t, dev, cost, error=why))
    _derive(rows, class_names or [])
    notes = _notes(rows)
    return {
        "settings": {
            "teacher": str(teacher),
            "student": ", ".join(str(p) for p in students),
            "artifacts": ", ".join(str(p) for p in exports) if exports else None,
            "teacher_artifacts": str(teacher_artifacts) if teacher_artifacts else None,
            "data": str(data) if data else None,
            "split": split,
            "data_kind": kind,
            "images_scored": len(next(iter(datasets.values()))) if datasets else 0,
            "size": list(size),
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "batch": 1,
            "devices": devices,
            "input": setup.input_note,
        },
        "hardware": hardware,
        "cost": cost,
        "classes": class_names or [],
        "rows": [r.to_dict() for r in rows],
        "notes": notes,
    }


def _frame_note(info: dict) -> str:
    """Why a frame-to-map row has no mIoU here: it takes camera frames at its own size, so
    the report's resized images do not fit it; its export scored it on the split's frames."""
    h, w = info.get("frame_size") or ("?", "?")
    miou = info.get("export_miou")
    return (f"frame-to-map graph ({h}x{w} frames): not scored on the report's images; its "
            f"export scored it on {info.get('export_images') or '?'} frames at {h}x{w}: mIoU "
            + ("n/a" if miou is None else f"{miou * 100:.2f}") + " (its manifest)")


TIMING_KEYS = (
    "latency_ms",
    "preprocess_ms",
    "postprocess_ms",
    "end_to_end_ms",
    "ratio_to_first",
    "samples_ms",
    "runtime_info",
)


@dataclass
class ReportRow:
    """One model, format and device of the report; :meth:`to_dict` is its row in
    ``report.json`` (and what :func:`render_markdown` / :func:`render_csv` read).

    Latency figures are :meth:`bench.latency.LatencyStats.to_dict` dicts (ms per image);
    mIoU and IoU in [0, 1]; ``delta_*`` against the teacher's PyTorch row;
    ``delta_miou_ci`` the paired bootstrap 95% interval of ``delta_miou`` over the images
    both rows were scored on (same units), ``verdict`` what it says
    (:func:`compress.evidence.paired_bootstrap`).
    """

    model: str
    name: str
    role: str
    format: str | None
    backend: str
    artifact_precision: str | None
    precision: str | None
    device: str
    path: str
    params: int
    gmacs: float
    size_mb: float | None
    miou: float | None = None
    delta_miou: float | None = None
    delta_miou_ci: list[float] | None = None
    verdict: str | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    per_class_delta: dict[str, float | None] = field(default_factory=dict)
    latency_ms: dict[str, float] | None = None
    preprocess_ms: dict[str, float] | None = None
    postprocess_ms: dict[str, float] | None = None
    end_to_end_ms: dict[str, float] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    speedup_same_backend: float | None = None
    speedup_vs_teacher_torch: float | None = None
    # frame in, map out: the teacher PyTorch row's end_to_end_ms over this row's
    speedup_frame_to_map: float | None = None
    status: str = "ok"
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    # set when the row was timed (its keys then appear in the JSON), else left out
    timing: dict[str, Any] | None = None
    accuracy_note: str | None = None  # why mIoU is n/a (left out of the JSON when None)
    # a multi-task row scored on depth labels (left out of the JSON when None)
    depth_rmse: float | None = None
    depth_abs_rel: float | None = None
    depth_delta1: float | None = None
    depth: dict[str, dict[str, float]] | None = None  # every dense output's figures
    per_image: ImageCounts | None = None  # the scoring's per-image counts (not in the JSON)

    @property
    def median_ms(self) -> float | None:
        return self.latency_ms["median"] if self.latency_ms else None

    def set_depth(self, figures: dict[str, dict[str, float]] | None) -> None:
        """Keep a multi-task row's depth figures (:func:`evaluate_runtime`'s ``depth``);
        the first dense output's RMSE, AbsRel and delta1 are the row's columns."""
        if not figures:
            return
        first = next(iter(figures.values()))
        if not first.get("pixels"):
            return
        self.depth = figures
        self.depth_rmse, self.depth_abs_rel = first["rmse"], first["abs_rel"]
        self.depth_delta1 = first["delta1"]

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__
               if k not in ("timing", "accuracy_note", "per_image") and k not in DEPTH_KEYS}
        if self.timing is not None:
            out.update({k: self.timing.get(k) for k in TIMING_KEYS})
        if self.accuracy_note is not None:
            out["accuracy_note"] = self.accuracy_note
        if self.depth is not None:
            out.update({k: getattr(self, k) for k in DEPTH_KEYS})
        return out


DEPTH_KEYS = ("depth_rmse", "depth_abs_rel", "depth_delta1", "depth")


def _row(
    t: Target, device: str, cost: dict, timing: dict | None = None, error: str | None = None
) -> ReportRow:
    role = t.info.get("role", "student")
    try:
        disk = size_on_disk(t.path) / 2**20
    except FileNotFoundError:
        disk, error = None, error or f"file not found: {t.path}"
    key = t.info.get("cost_key", role)
    row = ReportRow(
        model=t.label,
        name=key,
        role=role,
        format=t.info.get("format"),
        backend=t.backend,
        artifact_precision=t.info.get("artifact_precision"),
        precision=(timing or {}).get("precision") or t.precision,
        device=device,
        path=str(t.path),
        params=cost[key]["params"],
        gmacs=cost[key]["gmacs"],
        size_mb=disk,
        memory=(timing or {}).get("memory", {}),
        status="ok" if not error else "could not run",
        reason=error,
    )
    if timing and not error:
        row.timing = {k: timing.get(k) for k in TIMING_KEYS}
        row.latency_ms = timing.get("latency_ms")
        row.preprocess_ms = timing.get("preprocess_ms")
        row.postprocess_ms = timing.get("postprocess_ms")
        row.end_to_end_ms = timing.get("end_to_end_ms")
    return row


def _median(row) -> float | None:
    lat = row.get("latency_ms")
    return lat["median"] if lat else None


def _derive(rows: list[ReportRow], class_names: list[str]) -> None:
    """Accuracy deltas vs the teacher and speed-ups, filled in place."""
    t_acc = next(
        (r for r in rows if r.role == "teacher" and r.backend == CHECKPOINT and r.miou is not None),
        None,
    )
    for r in rows:
        if t_acc and r.miou is not None:
            r.delta_miou = r.miou - t_acc.miou
            if r is not t_acc and r.per_image is not None and t_acc.per_image is not None:
                # the gap on the same images, resampled together: is it more than noise?
                gap = paired_bootstrap([t_acc.per_image], [r.per_image])
                r.delta_miou_ci, r.verdict = [gap.low / 100, gap.high / 100], gap.verdict
            for name in class_names:
                a, b = r.per_class_iou.get(name), t_acc.per_class_iou.get(name)
                r.per_class_delta[name] = None if a is None or b is None else a - b
        ms = r.median_ms
        if ms is None or ms <= 0:
            continue
        same = [
            t
            for t in rows
            if t.role == "teacher" and t.device == r.device and t.backend == r.backend
            and t.median_ms
        ]
        same.sort(key=lambda t: t.artifact_precision not in FP_PRECISIONS)
        if same:
            r.speedup_same_backend = same[0].median_ms / ms
        torch_t = next(
            (
                t
                for t in rows
                if t.role == "teacher" and t.backend == CHECKPOINT and t.device == r.device
                and t.median_ms
            ),
            None,
        )
        if torch_t:
            r.speedup_vs_teacher_torch = torch_t.median_ms / ms
            e2e, t_e2e = r.end_to_end_ms or {}, torch_t.end_to_end_ms or {}
            if e2e.get("median") and t_e2e.get("median"):
                r.speedup_frame_to_map = t_e2e["median"] / e2e["median"]


def _notes(rows: list[ReportRow]) -> list[str]:
    """Report-level remarks: INT8 not faster than FP, precision changes, rows not run."""
    notes = []
    for r in rows:
        if r.status != "ok":
            notes.append(f"{r.model} on {r.device}: could not run ({r.reason})")
            continue
        if r.accuracy_note:
            r.notes.append(r.accuracy_note)
        ran, asked = canonical_precision(r.precision), canonical_precision(r.artifact_precision)
        if ran and asked and ran != asked:
            r.notes.append(f"{asked} model executed in {ran}")
        hint = canonical_precision(((r.timing or {}).get("runtime_info") or {})
                              .get("inference_precision_hint"))
        if get_backend(r.backend).sets_precision and hint and hint not in (ran, "f32"):
            r.notes.append(f"float layers run in {hint} (OpenVINO's default on this CPU)")
        if asked == "int8" and r.median_ms:
            fps = [
                f
                for f in rows
                if f.role == r.role
                and f.name == r.name
                and f.backend == r.backend
                and f.device == r.device
                and f.artifact_precision in FP_PRECISIONS
                and f.median_ms
            ]
            if not fps and r.backend != CHECKPOINT:
                r.notes.append(f"no FP32/FP16 {r.format} artifact to compare INT8 with")
            for f in fps:
                if r.median_ms >= f.median_ms:
                    text = (
                        f"INT8 is not faster than {f.artifact_precision.upper()} on "
                        f"{r.backend}/{r.device} ({r.median_ms:.2f} vs "
                        f"{f.median_ms:.2f} ms/image)"
                    )
                    r.notes.append(text)
                    notes.append(f"{r.model}: {text}")
        for name, d in r.per_class_delta.items():
            if d is not None and d * 100 <= -COLLAPSE_POINTS:
                r.notes.append(f"{name} IoU {d * 100:+.1f} pts vs teacher")
    return notes


# ---------------------------------------------------------------- output


def _fmt(v, spec: str = ".2f", scale: float = 1.0, none: str = "—") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v * scale, spec)


def _ci_cell(r: dict) -> str:
    ci = r.get("delta_miou_ci")
    if not ci:
        return "—"
    return f"[{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}] {r['verdict']}"


def _latency_cell(r: dict, key: str = "latency_ms") -> str:
    if r["status"] != "ok":
        return f"could not run: {r['reason']}" if key == "latency_ms" else "—"
    lat = r.get(key)
    return f"{lat['median']:.2f} ± {lat['std']:.2f}" if lat else "—"


SUMMARY_COLUMNS = [
    "model",
    "backend",
    "device",
    "precision (ran)",
    "params (M)",
    "GMACs",
    "size (MB)",
    "mIoU",
    "Δ mIoU",
    "Δ 95% CI",
    "frame→map ms (median ± std)",
    "frame→map × teacher PyTorch",
    "ms/image (median ± std)",
    "× teacher same backend",
    "× teacher PyTorch",
    "peak RSS (MB)",
    "notes",
]


DEPTH_COLUMNS = ["depth RMSE", "depth AbsRel", "depth δ1"]  # only when a row has depth


def has_depth(report: dict) -> bool:
    """Whether some row was scored on depth (a multi-task model on a split with depth)."""
    return any(r.get("depth_rmse") is not None for r in report["rows"])


def _depth_cells(r: dict) -> list[str]:
    return [_fmt(r.get("depth_rmse"), ".3f"), _fmt(r.get("depth_abs_rel"), ".3f"),
            _fmt(r.get("depth_delta1"), ".2f", 100)]


def summary_table(report: dict) -> list[list[str]]:
    """The summary as rows of strings (header first), one per model, format and device;
    depth columns after Δ mIoU when some row has depth figures."""
    depth = has_depth(report)
    cut = SUMMARY_COLUMNS.index("Δ mIoU") + 1
    table = [SUMMARY_COLUMNS[:cut] + DEPTH_COLUMNS + SUMMARY_COLUMNS[cut:]
             if depth else SUMMARY_COLUMNS]
    for r in report["rows"]:
        mem = r.get("memory") or {}
        line = (
            [
                r["model"],
                r["backend"],
                r["device"],
                r["precision"] or "—",
                _fmt(r["params"], ".2f", 1e-6),
                _fmt(r["gmacs"], ".3f"),
                _fmt(r["size_mb"], ".2f"),
                _fmt(r["miou"], ".2f", 100),
                _fmt(r["delta_miou"], "+.2f", 100),
                _ci_cell(r),
                _latency_cell(r, "end_to_end_ms"),
                _fmt(r.get("speedup_frame_to_map"), ".2f")
                + ("×" if r.get("speedup_frame_to_map") else ""),
                _latency_cell(r),
                _fmt(r["speedup_same_backend"], ".2f") + ("×" if r["speedup_same_backend"] else ""),
                _fmt(r["speedup_vs_teacher_torch"], ".2f")
                + ("×" if r["speedup_vs_teacher_torch"] else ""),
                _fmt(mem.get("peak_rss_mb"), ".0f"),
                "; ".join(r["notes"]),
            ]
        )
        table.append(line[:cut] + _depth_cells(r) + line[cut:] if depth else line)
    return table


def per_class_table(report: dict) -> list[list[str]]:
    """Per-class IoU of the teacher and the change of every other scored row (points)."""
    scored = _scored_rows(report)
    teacher = next((r for r in scored if r["role"] == "teacher" and r["backend"] == CHECKPOINT),
                   None)
    others = [r for r in scored if r is not teacher]
    head = ["class", "teacher IoU"] + [f"Δ {r['model']}" for r in others]
    table = [head]
    for name in report["classes"]:
        line = [name, _fmt(teacher["per_class_iou"].get(name) if teacher else None, ".1f", 100)]
        for r in others:
            d = r["per_class_delta"].get(name)
            cell = _fmt(d, "+.1f", 100)
            if d is not None and d * 100 <= -COLLAPSE_POINTS:
                cell = f"**{cell}**"
            line.append(cell)
        table.append(line)
    return table


def _scored_rows(report: dict) -> list[dict]:
    """Rows with accuracy, one per model (the first device that scored it)."""
    seen, out = set(), []
    for r in report["rows"]:
        if r["miou"] is not None and r["model"] not in seen:
            seen.add(r["model"])
            out.append(r)
    return out


def _markdown_table(table: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in row] for row in table]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in esc[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


DEPTH_NOTE = ("- depth (multi-task models, on the split's depth labels): RMSE and AbsRel in "
              "the task's unit, δ1 = % of pixels within 1.25× of the label")


def render_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    s = report["settings"]
    out = ["# Teacher vs student", ""]
    for dev, hw in report["hardware"].items():
        out.append(f"- **{dev}**: {hw['summary']}")
    out += [
        f"- teacher `{s['teacher']}`, student `{s['student']}`"
        + (f", artifacts `{s['artifacts']}`" if s["artifacts"] else ""),
        (
            f"- accuracy: {s['data_kind']} `{s['data'] or '-'}` [{s['split']}], "
            f"{s['images_scored']} images at {s['size'][0]}x{s['size'][1]}"
        ),
        (
            f"- latency: batch {s['batch']}, {s['warmup']} warm-up + {s['runs']} timed runs, "
            f"models interleaved run by run, {s['threads']} CPU thread(s); inputs: {s['input']}"
        ),
        (
            "- frame→map: camera frame in, class map out (median ± std ms/image): the "
            "pre-processing (resize, normalise), the model and the post-processing (argmax, "
            "resize back), or a frame-to-map graph (`compress export --e2e`) alone; ms/image "
            "is the model alone; each stage is in the JSON"
        ),
        f"- {GMACS_DEFINITION}, at the report size (see docs/bench.md)",
        *([DEPTH_NOTE] if has_depth(report) else []),
        "",
        "## Summary",
        "",
        _markdown_table(summary_table(report)),
        "",
    ]
    if report["classes"] and _scored_rows(report):
        out += [
            "## Per-class IoU (teacher, and change in points)",
            "",
            f"Bold: a class that lost {COLLAPSE_POINTS:.0f} points or more.",
            "",
            _markdown_table(per_class_table(report)),
            "",
        ]
    if report["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    for title, name in (images or {}).items():
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)


CSV_COLUMNS = [
    "model",
    "role",
    "format",
    "backend",
    "artifact_precision",
    "precision",
    "device",
    "params",
    "gmacs",
    "size_mb",
    "miou",
    "delta_miou",
    "delta_miou_ci_low",
    "delta_miou_ci_high",
    "verdict",
    "ms_median",
    "ms_std",
    "ms_min",
    "ms_p90",
    "ms_max",
    "pre_ms_median",
    "post_ms_median",
    "speedup_same_backend",
    "speedup_vs_teacher_torch",
    "speedup_frame_to_map",
    "e2e_ms_median",
    "peak_rss_mb",
    "gpu_mem_mb",
    "status",
    "reason",
    "notes",
]


CSV_DEPTH_COLUMNS = ["depth_rmse", "depth_abs_rel", "depth_delta1"]  # after delta_miou


def render_csv(report: dict) -> str:
    names = report["classes"]
    columns = CSV_COLUMNS
    if has_depth(report):
        cut = CSV_COLUMNS.index("delta_miou") + 1
        columns = CSV_COLUMNS[:cut] + CSV_DEPTH_COLUMNS + CSV_COLUMNS[cut:]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns + [f"iou_{n}" for n in names] + [f"delta_iou_{n}" for n in names])
    for r in report["rows"]:
        lat = r["latency_ms"] or {}
        mem = r.get("memory") or {}
        values = {
            **r,
            "ms_median": lat.get("median"),
            "ms_std": lat.get("std"),
            "ms_min": lat.get("min"),
            "ms_p90": lat.get("p90"),
            "ms_max": lat.get("max"),
            "pre_ms_median": (r["preprocess_ms"] or {}).get("median"),
            "post_ms_median": (r["postprocess_ms"] or {}).get("median"),
            "e2e_ms_median": (r.get("end_to_end_ms") or {}).get("median"),
            "peak_rss_mb": mem.get("peak_rss_mb"),
            "gpu_mem_mb": mem.get("gpu_mem_mb"),
            "notes": "; ".join(r["notes"]),
            **dict(zip(("delta_miou_ci_low", "delta_miou_ci_high"), r.get("delta_miou_ci") or ())),
        }
        w.writerow(
            [_csv(values.get(c)) for c in columns]
            + [_csv(r["per_class_iou"].get(n)) for n in names]
            + [_csv(r["per_class_delta"].get(n)) for n in names]
        )
    return buf.getvalue()


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


# a marker per backend, in the registry's order
FORMAT_MARKERS = dict(zip((b.name for b in backends()), "os^Dvp*hX"))


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats: none at least as fast with at least the mIoU (strictly
    better in one), sorted by latency."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (_median(r), -r["miou"])):
        if r["miou"] > best:
            front.append(r)
            best = r["miou"]
    return front


def plot_pareto(report: dict, path: Path, title: str = "accuracy vs latency") -> Path | None:
    """mIoU vs ms/image, one panel per device: a colour per model (teacher red), a marker
    per format, the Pareto front drawn and labelled; None if nothing was both timed and
    scored. A row with ``miou_std`` (e.g. over seeds) gets a vertical error bar too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    devices = [
        d
        for d in dict.fromkeys(r["device"] for r in report["rows"])
        if any(r["device"] == d and r["miou"] is not None and _median(r) for r in report["rows"])
    ]
    if not devices:
        return None
    names = list(dict.fromkeys(r.get("name", r["role"]) for r in report["rows"]))
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # red: teacher
    students = [n for n in names if n != "teacher"]
    colour = {n: palette[i % len(palette)] for i, n in enumerate(students)}
    colour["teacher"] = "tab:red"
    fig, axes = plt.subplots(1, len(devices), figsize=(7 * len(devices), 5), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        pts = [
            r for r in report["rows"] if r["device"] == dev and r["miou"] is not None and _median(r)
        ]
        for r in pts:
            std = r["latency_ms"]["std"]
            int8 = canonical_precision(r["artifact_precision"]) == "int8"
            ax.errorbar(_median(r), r["miou"] * 100,
                        xerr=[[min(std, _median(r))], [std]],
                        yerr=r["miou_std"] * 100 if r.get("miou_std") else None,
                        fmt=FORMAT_MARKERS.get(r["backend"], "o"),
                        color=colour[r.get("name", r["role"])],
                        mfc=colour[r.get("name", r["role"])] if int8 or r["role"] == "teacher"
                        else "white",
                        capsize=2, elinewidth=0.8, alpha=0.9)
        front = pareto_front(pts)
        ax.step([_median(r) for r in front], [r["miou"] * 100 for r in front], where="post",
                color="gray", linestyle="--", linewidth=1)
        labelled = {id(r) for r in front} | {id(r) for r in pts if r["role"] == "teacher"}
        for k, r in enumerate(r for r in sorted(pts, key=_median) if id(r) in labelled):
            ax.annotate(r["model"], (_median(r), r["miou"] * 100), fontsize=7,
                        xytext=(5, -12 if k % 2 else 6), textcoords="offset points")
        handles = [Line2D([], [], color=colour[n], marker="o", linestyle="", label=n)
                   for n in names]
        handles += [Line2D([], [], color="black", marker=m, linestyle="", mfc="white",
                           label=FORMAT_NAMES.get(b, b))
                    for b, m in FORMAT_MARKERS.items() if any(r["backend"] == b for r in pts)]
        handles += [Line2D([], [], color="black", marker="o", linestyle="", label="int8: filled"),
                    Line2D([], [], color="gray", linestyle="--", label="Pareto front (labelled)")]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        ax.margins(x=0.12, y=0.15)
        ax.set_xlabel("ms / image (median ± std, batch 1)")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{dev}: {title}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_class(report: dict, path: Path) -> Path | None:
    """Grouped bars of per-class IoU for every scored model; None if none was scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored, names = _scored_rows(report), report["classes"]
    if not scored or not names:
        return None
    width = 0.8 / len(scored)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5))
    for k, r in enumerate(scored):
        vals = [(r["per_class_iou"].get(n) or 0.0) * 100 for n in names]
        ax.bar(x + (k - (len(scored) - 1) / 2) * width, vals, width, label=r["model"])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class IoU")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


REPORT_FILES = ("report.md", "report.csv", "report.json", "pareto.png", "per_class.png")


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``report.json`` and the PNG charts to ``out``.

    Returns:
        Name -> path of each file written.

    Raises:
        OutputError: ``out`` is not a folder the toolkit may write (see
            :func:`compress.outdir.open_out`), or holds a same-named file it did not write.
    """
    from compress.io import atomic_write_json, atomic_write_text

    target = open_out(out)
    target.claim(REPORT_FILES)
    out = target.path
    files: dict[str, Path] = {}
    images = {}
    for key, title, fn in (
        ("pareto", "mIoU vs latency", plot_pareto),
        ("per_class", "per-class IoU", plot_per_class),
    ):
        p = fn(report, out / f"{key}.png")
        if p:
            files[key] = p
            images[title] = p.name
    files["markdown"] = atomic_write_text(out / "report.md", render_markdown(report, images))
    files["csv"] = atomic_write_text(out / "report.csv", render_csv(report))
    files["json"] = atomic_write_json(out / "report.json", _jsonable(report))
    target.record(REPORT_FILES)
    return files


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
