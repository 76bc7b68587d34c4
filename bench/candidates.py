"""``bench candidates``: latency of untrained students before any training run.

Each candidate (a zoo name or a recipe file) is built untrained, saved as a checkpoint,
exported with the deploy functions (ONNX export + verification against PyTorch, NNCF
INT8 on a few calibration images, OpenVINO IR, TensorRT engines when a GPU is here),
and all artifacts, with the teacher in PyTorch when given, are timed interleaved by the
latency harness of :mod:`bench.latency`. Untrained weights: the figures are latency,
params and GMACs only; no accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import (
    Target,
    describe_machine,
    load_images,
    make_preprocess,
    prepare_timing,
    time_targets,
)
from compress.errors import InputError, first_line
from compress.macs import GMACS_DEFINITION
from compress.outdir import open_out
from compress.spec import ModelSpec
from deploy import runtime as registry
from deploy.runtime import Backend


def _key(b: Backend, precision: str) -> str:
    """``onnxruntime``, ``openvino-int8``, ``tensorrt-fp16``: the backend's name, with the
    precision where it is not f32."""
    return b.name if precision == "f32" else f"{b.name}-{precision}"


# backend key -> (runtime backend, artifact precision), from deploy's registry (what each
# backend's export builds); where each is timed is the backend's default device
BACKENDS: dict[str, tuple[str, str]] = {
    _key(b, p): (b.name, p) for b in registry.backends() for p in b.builds}
# every key but the source's INT8 ONNX: the intermediate the others are built from, timed
# when asked
DEFAULT_BACKENDS = tuple(k for k, (b, p) in BACKENDS.items()
                         if not (b == registry.source_backend().name and p == "int8"))
CANDIDATE_FILES = ("candidates.json", "candidates.csv", "candidates.md", "candidates_run.json",
                   "candidates.png")
UNTRAINED_NOTE = ("untrained students (random decoder, encoder as built): latency, params "
                  "and GMACs only, no accuracy")

Log = Callable[[str], None]


@dataclass
class Candidate:
    """A student to measure: ``name`` labels its rows, ``source`` is ``zoo`` or a recipe."""

    name: str
    spec: ModelSpec
    source: str = "zoo"
    artifacts: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def zoo_names() -> list[str]:
    """The names ``bench candidates --list`` prints."""
    from compress.zoo import student_names

    return student_names()


def resolve_candidates(names: Sequence[str], *, classes: int, class_names: list[str] | None,
                       size: tuple[int, int], ignore_index: int = 255) -> list[Candidate]:
    """Zoo names or recipe files (``.yaml``) -> candidates with their model specs.

    Raises:
        ZooError: an unknown zoo name (the message lists the zoo).
        ConfigError: a recipe that does not validate (file and key named).
        ValueError: the same name twice.
    """
    from compress.config import load_config
    from compress.models import make_spec
    from compress.zoo import student_spec

    common = {"class_names": class_names, "ignore_index": ignore_index, "input_size": size}
    out: list[Candidate] = []
    for n in names:
        if n.endswith((".yaml", ".yml")):
            m = load_config(n).model
            spec = make_spec(arch=m.arch, encoder=m.encoder, classes=classes,
                             decoder_channels=m.decoder_channels, factory=m.factory,
                             kwargs=m.kwargs, mean=m.mean, std=m.std, **common)
            out.append(Candidate(m.student or Path(n).stem, spec, source=n))
        else:
            out.append(Candidate(n, student_spec(n, classes, **common)))
    seen = [c.name for c in out]
    dupes = sorted({s for s in seen if seen.count(s) > 1})
    if dupes:
        raise InputError(f"candidates: {', '.join(dupes)} given more than once")
    return out


def build_candidate(cand: Candidate, out: Path, size: tuple[int, int], backends: Sequence[str],
                    calibration: list[np.ndarray], min_agreement: float = 0.99) -> None:
    """Build ``cand`` untrained, count params/GMACs and write its artifacts under ``out``.

    Fills ``cand.artifacts`` (backend key -> file) and ``cand.errors`` (backend key -> why
    not); a failing step costs the rows that need it, not the run.
    """
    from compress.macs import count_flops
    from compress.models import create_model, save_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    model = create_model(cand.spec).eval()
    fl = count_flops(model, size, breakdown=False)
    cand.facts.update(params=fl.params["total"], gmacs=fl.gmacs)
    ckpt_backend = registry.checkpoint_backend()
    ckpt = save_checkpoint(out / ckpt_backend.artifact_name(ckpt_backend.builds[0]), model,
                           cand.spec, untrained=True)
    cand.artifacts[ckpt_backend.name] = ckpt
    rest = [b for b in backends if b != ckpt_backend.name]
    if not rest:
        return
    try:
        _export(cand, model, out, size, rest, calibration, min_agreement)
    except Exception as e:  # noqa: BLE001 - one candidate's failure is its rows' error
        for b in rest:
            cand.errors.setdefault(b, f"export: {first_line(e)}")


def _export(cand: Candidate, model, out: Path, size, backends: Sequence[str],
            calibration: list[np.ndarray], min_agreement: float) -> None:
    """The source ONNX (verified against PyTorch), its INT8 graph where an int8 key is
    asked, then each converted backend's artifact by the registry's converter."""
    from deploy.export import export_onnx, export_spec, verify_onnx

    source = registry.source_backend()
    spec = export_spec(cand.spec, size, argmax=False)
    onnx_path = export_onnx(model, out / source.artifact_name("f32"), cand.spec, size=size)
    batches = [(np.stack(calibration[i:i + 2]), None) for i in range(0, len(calibration), 2)]
    res = verify_onnx(onnx_path, model, batches, min_agreement=min_agreement)
    cand.facts["onnx_agreement"] = res["agreement"]
    cand.facts["onnx_max_abs_diff"] = res["max_abs_diff"]
    cand.artifacts[_key(source, "f32")] = onnx_path
    int8_path = None
    int8_keys = [b for b in backends if BACKENDS[b][1] == "int8"]
    if int8_keys:
        import onnx

        from deploy.quantize import quantize_int8

        # symmetric ("performance") where a backend asked for needs it (TensorRT)
        needs = {registry.get_backend(BACKENDS[b][0]).int8_preset for b in int8_keys}
        preset = "performance" if "performance" in needs else "mixed"
        try:
            q = quantize_int8(onnx.load(str(onnx_path)), calibration, preset=preset,
                              subset_size=len(calibration))
            int8_path = out / source.artifact_name("int8")
            onnx.save(q, str(int8_path))
            cand.artifacts[_key(source, "int8")] = int8_path
            cand.facts["int8_preset"] = preset
        except Exception as e:  # noqa: BLE001
            for b in int8_keys:
                cand.errors[b] = f"int8: {first_line(e)}"
    for b in backends:
        name, precision = BACKENDS[b]
        backend = registry.get_backend(name)
        if backend.convert is None:
            continue
        why = backend.available(backend.default_device())
        if why:
            cand.errors[b] = why
            continue
        src = int8_path if precision == "int8" else onnx_path
        if src is None:
            continue
        try:
            cand.artifacts[b] = backend.convert(src, out / backend.artifact_name(precision),
                                                spec=spec, precision=precision, size=size)
        except Exception as e:  # noqa: BLE001
            cand.errors[b] = f"{name}: {first_line(e)}"




def pareto_flags(rows: Sequence[dict[str, Any]], cost: str = "median_ms",
                 value: str = "params") -> list[bool]:
    """Pareto flag of each row within its backend: no other row of the same backend is at
    least as fast (``cost`` lower or equal) with at least as much ``value`` (higher or
    equal), and strictly better in one. Rows without a ``cost`` are never on the front."""
    flags = []
    for a in rows:
        ok = a.get(cost) is not None and not math.isnan(a[cost])
        if ok:
            for b in rows:
                if b is a or b.get("backend") != a.get("backend") or b.get(cost) is None:
                    continue
                if (b[cost] <= a[cost] and b[value] >= a[value]
                        and (b[cost] < a[cost] or b[value] > a[value])):
                    ok = False
                    break
        flags.append(ok)
    return flags


def run_candidates(
    names: Sequence[str],
    out: str | Path,
    *,
    size: tuple[int, int] = (192, 256),
    teacher: str | Path | None = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
    classes: int | None = None,
    data: str | Path | None = None,
    data_kind: str = "camvid",
    calib_images: int = 8,
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    budget_ms: float | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Build, export and time ``names``; the rows :func:`write_candidates` writes.

    Args:
        names: zoo names or recipe files.
        out: work and output directory (``out/models/<name>/`` holds the artifacts).
        size: ``(H, W)`` the candidates are exported and timed at.
        teacher: a teacher checkpoint, timed in PyTorch; it also gives the class count,
            class names and ignore index.
        backends: keys of :data:`BACKENDS`.
        classes: class count without a teacher (default 11, CamVid's).
        data: dataset root for calibration and timing images (``train`` split for
            calibration); without it, the synthetic scenes of ``compress.data``.
        calib_images: images for the INT8 calibration.
        budget_ms: rows at or under it get ``fits_budget: true``.

    Returns:
        ``{"rows": [...], "settings": {...}, "hardware": {...}}``; rows have ``name``,
        ``backend``, ``params``, ``gmacs``, ``median_ms``, ``std_ms``, ``pareto`` and more.
    """

    log = log or (lambda msg: None)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise InputError(f"candidates: unknown backend(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(BACKENDS)}")
    if any(s <= 0 or s % 32 for s in size):
        raise InputError(f"candidates: --size {size[0]}x{size[1]} must be multiples of 32")
    target = open_out(out)  # before any work: never over files the toolkit did not write
    target.check(CANDIDATE_FILES)
    out = target.path
    t_spec = None
    if teacher is not None:
        from compress.models import read_checkpoint

        t_spec = read_checkpoint(teacher)["spec"]
        if t_spec is None:
            raise InputError(f"{teacher}: a plain state_dict has no model spec; give a "
                             "segcompress checkpoint as --teacher")
    n_classes = t_spec.classes if t_spec else (classes or 11)
    cands = resolve_candidates(
        names, classes=n_classes, class_names=t_spec.class_names if t_spec else None,
        size=size, ignore_index=t_spec.ignore_index if t_spec else 255)
    kind = data_kind if data is not None else "synthetic"
    setup = prepare_timing(size, threads=threads, data=data, split="val", kind=kind, seed=1)
    threads = setup.threads
    calib_frames, calib_note = load_images(data, "train", kind, count=calib_images, size=size)
    ckpt = registry.checkpoint_backend()
    said: set[tuple[str, str]] = set()
    for i, c in enumerate(cands, 1):
        log(f"[{i}/{len(cands)}] {c.name}: build untrained, export "
            f"({', '.join(b for b in backends if b != ckpt.name) or 'none'})")
        pre = make_preprocess(calib_frames, size, c.spec.mean, c.spec.std)
        calibration = [pre(j)[0] for j in range(len(calib_frames))]
        target.claim(target.files_under(f"models/{c.name}"))
        build_candidate(c, out / "models" / c.name, size, backends, calibration)
        target.record(target.files_under(f"models/{c.name}"))
        for b, why in c.errors.items():
            if (b, why) not in said:  # an unavailable backend: said once, not per candidate
                log(f"    {b}: {why}")
                said.add((b, why))
    by_device: dict[str, list[Target]] = {}
    teacher_label = f"teacher/{ckpt.name}"
    if teacher is not None:
        by_device[ckpt.default_device()] = [Target(teacher_label, Path(teacher), ckpt.name)]
    for c in cands:
        for b in backends:
            if b in c.artifacts:
                backend = registry.get_backend(BACKENDS[b][0])
                # a float artifact of a backend that picks its precision at load: as built
                ask = "f32" if backend.sets_precision and BACKENDS[b][1] == "f32" else None
                t = Target(f"{c.name}/{b}", c.artifacts[b], backend.name, ask)
                by_device.setdefault(backend.default_device(), []).append(t)
    timed: dict[str, dict[str, Any]] = {}
    for dev, items in by_device.items():
        log(f"timing {len(items)} models interleaved on {dev} ({runs} runs after {warmup} "
            f"warm-up, {threads} thread(s))")
        for row in time_targets(items, dev, setup, runs=runs, warmup=warmup).dicts():
            timed[row["label"]] = row
    rows = [_teacher_row(timed[teacher_label], t_spec, size)] if teacher is not None else []
    for c in cands:
        for b in backends:
            rows.append(_row(c, b, timed.get(f"{c.name}/{b}"), teacher is not None, budget_ms))
    cand_rows = [r for r in rows if r["role"] == "candidate"]
    for r, flag in zip(cand_rows, pareto_flags(cand_rows)):
        r["pareto"] = flag
    settings = {"size": list(size), "threads": threads, "runs": runs, "warmup": warmup,
                "backends": list(backends), "teacher": str(teacher) if teacher else None,
                "classes": n_classes, "calibration": calib_note, "timing_input": setup.input_note,
                "budget_ms": budget_ms, "note": UNTRAINED_NOTE,
                "pareto": "per backend: no other candidate as fast or faster with as many "
                          "parameters or more (params as the capacity proxy of untrained "
                          "students)"}
    return {"rows": rows, "settings": settings, "hardware": describe_machine("cpu", threads)}


def _stats(timing: dict[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    if not timing or timing.get("error") or "latency_ms" not in timing:
        return None, None, None
    lat = timing["latency_ms"]
    return lat["median"], lat["std"], lat["p90"]


def _teacher_row(timing: dict[str, Any], spec: ModelSpec, size) -> dict[str, Any]:
    from compress.macs import count_flops
    from compress.models import create_model

    fl = count_flops(create_model(spec).eval(), size, breakdown=False)
    median, std, p90 = _stats(timing)
    return {"name": "teacher", "role": "teacher", "source": timing["path"],
            "arch": spec.arch, "encoder": spec.encoder,
            "backend": registry.checkpoint_backend().name,
            "precision": timing.get("precision"), "params": fl.params["total"],
            "gmacs": fl.gmacs, "median_ms": median, "std_ms": std, "p90_ms": p90,
            "speedup_vs_teacher": 1.0 if median else None, "fits_budget": None,
            "pareto": False, "error": timing.get("error")}


def _row(c: Candidate, backend: str, timing: dict[str, Any] | None, with_teacher: bool,
         budget_ms: float | None) -> dict[str, Any]:
    median, std, p90 = _stats(timing)
    error = c.errors.get(backend) or (timing or {}).get("error")
    if timing is None and error is None:
        error = "not built"
    speedup = None
    if with_teacher and median is not None:
        ratio = timing.get("ratio_to_first")  # paired by round against the teacher
        speedup = 1.0 / ratio if ratio and not math.isnan(ratio) else None
    return {"name": c.name, "role": "candidate", "source": c.source, "arch": c.spec.arch,
            "encoder": c.spec.encoder, "backend": backend,
            "precision": (timing or {}).get("precision") or BACKENDS[backend][1],
            "params": c.facts.get("params"), "gmacs": c.facts.get("gmacs"),
            "median_ms": median, "std_ms": std, "p90_ms": p90, "speedup_vs_teacher": speedup,
            "fits_budget": None if budget_ms is None or median is None else median <= budget_ms,
            "pareto": False, "onnx_agreement": c.facts.get("onnx_agreement"),
            "error": error}


# ---------------------------------------------------------------- output

COLUMNS = ("name", "role", "backend", "precision", "arch", "encoder", "params", "gmacs",
           "median_ms", "std_ms", "p90_ms", "speedup_vs_teacher", "fits_budget", "pareto",
           "onnx_agreement", "source", "error")


def not_run_here(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """backend -> why, for each backend that timed no candidate, all for the same reason
    (a backend this machine lacks: TensorRT without a GPU); the table says it once."""
    reasons: dict[str, set] = {}
    for r in rows:
        if r["role"] == "candidate":
            reasons.setdefault(r["backend"], set()).add(
                r["error"] if r["median_ms"] is None else None)
    return {b: next(iter(why)) for b, why in reasons.items()
            if len(why) == 1 and None not in why}


def render_markdown(result: dict[str, Any]) -> str:
    """The table a person reads: one row per (candidate, backend); a backend that ran no
    candidate here for one reason is one line above the table instead of a row each."""
    s = result["settings"]
    absent = not_run_here(result["rows"])
    budget = s.get("budget_ms")
    lines = [
        f"# Candidates at {s['size'][0]}x{s['size'][1]}, batch 1",
        "",
        f"**{s['note']}.**",
        "",
        f"- Hardware: {result['hardware']['summary']}; {s['threads']} thread(s)",
        (f"- Timing: {s['runs']} interleaved runs after {s['warmup']} warm-up; input: "
        f"{s['timing_input']}"),
        f"- INT8 calibration: {s['calibration']}",
        f"- Pareto: {s['pareto']}",
        f"- {GMACS_DEFINITION}",
    ]
    if budget is not None:
        lines.append(f"- Budget: {budget:g} ms per image")
    lines += [f"- Not run here: {b} ({why}), for every candidate" for b, why in absent.items()]
    lines += ["", ("| candidate | backend | params (M) | GMACs | ms (median ± std) | "
              "x teacher (PyTorch) | fits budget | Pareto |"), "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["role"] == "candidate" and r["backend"] in absent:
            continue
        ms = (f"{r['median_ms']:.2f} ± {r['std_ms']:.2f}" if r["median_ms"] is not None
              else f"— ({r['error']})")
        sp = f"{r['speedup_vs_teacher']:.2f}x" if r.get("speedup_vs_teacher") else "—"
        fit = {True: "yes", False: "no", None: "—"}[r.get("fits_budget")]
        params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "—"
        gm = f"{r['gmacs']:.3f}" if r.get("gmacs") is not None else "—"
        name = f"**{r['name']}**" if r["role"] == "teacher" else r["name"]
        lines.append(f"| {name} | {r['backend']} | {params} | {gm} | {ms} | {sp} | {fit} | "
                     f"{'yes' if r['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def render_csv(result: dict[str, Any]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in result["rows"]:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in COLUMNS])
    return buf.getvalue()


def plot_candidates(result: dict[str, Any], path: Path) -> Path | None:
    """ms/image (x) vs params (y) per backend, the front joined, the budget as a line."""
    rows = [r for r in result["rows"] if r["median_ms"] is not None and r["params"]]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for b in dict.fromkeys(r["backend"] for r in rows if r["role"] == "candidate"):
        pts = [r for r in rows if r["backend"] == b and r["role"] == "candidate"]
        sc = ax.scatter([r["median_ms"] for r in pts], [r["params"] / 1e6 for r in pts],
                        label=b, s=25)
        front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["median_ms"])
        ax.plot([r["median_ms"] for r in front], [r["params"] / 1e6 for r in front],
                color=sc.get_facecolor()[0], lw=1)
        for r in pts:
            ax.annotate(r["name"], (r["median_ms"], r["params"] / 1e6), fontsize=6,
                        alpha=0.7)
    for r in rows:
        if r["role"] == "teacher":
            ax.scatter([r["median_ms"]], [r["params"] / 1e6], marker="*", s=120, color="k",
                       label="teacher (PyTorch)")
    if result["settings"].get("budget_ms") is not None:
        ax.axvline(result["settings"]["budget_ms"], ls="--", color="grey", label="budget")
    ax.set_xscale("log")
    ax.set_xlabel("ms / image (median, batch 1)")
    ax.set_ylabel("parameters (M)")
    s = result["settings"]
    ax.set_title(f"untrained candidates at {s['size'][0]}x{s['size'][1]}, {s['threads']} "
                 "thread(s): latency only", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_candidates(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``candidates.json`` (the list of rows), ``.csv``, ``.md``, ``.png`` and
    ``candidates_run.json`` (settings and hardware) into ``out``, atomically each."""
    from compress.io import atomic_write_json, atomic_write_text

    target = open_out(out)
    target.claim(CANDIDATE_FILES)
    out = target.path
    files = {"json": out / "candidates.json", "csv": out / "candidates.csv",
             "md": out / "candidates.md", "run": out / "candidates_run.json"}
    atomic_write_json(files["json"], result["rows"])
    atomic_write_text(files["csv"], render_csv(result))
    atomic_write_text(files["md"], render_markdown(result))
    atomic_write_json(files["run"], {"settings": result["settings"],
                                     "hardware": result["hardware"]})
    png = plot_candidates(result, out / "candidates.png")
    if png is not None:
        files["png"] = png
    target.record(CANDIDATE_FILES)
    return files
