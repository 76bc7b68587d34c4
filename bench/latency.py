"""Latency: interleaved timed runs, robust statistics, and the machine they ran on.

Several models are timed run by run (A, B, C, then B, C, A, ...), so a drift in the
machine's speed (thermal, a neighbour's job) hits them alike and the ratio between them
holds. Each run times three stages separately: pre-processing (resize to the model size,
normalise), the model itself (synchronised on CUDA with events), and post-processing
(argmax, nearest resize back to the source size).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from compress.devices import check_device
from compress.errors import InputError, first_line
from compress.spec import ModelSpec
from deploy import machine
from deploy import runtime as registry
from deploy.machine import describe_hardware

# backend names and their format labels come from deploy's registry (one table)
BACKENDS = tuple(b.name for b in registry.backends())
FORMAT_NAMES = {b.name: b.label for b in registry.backends()}
NOISE_NOTE = "random-noise images (no --data given)"


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class LatencyStats:
    """Summary of timed runs, in milliseconds per image.

    ``std`` is the sample standard deviation; ``p90`` the 90th percentile (linear
    interpolation).
    """

    n: int
    median: float
    mean: float
    std: float
    min: float
    p90: float
    max: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Statistics of ``samples_ms`` (at least one value).

        Raises:
            ValueError: no samples.
        """
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        return cls(
            n=int(a.size),
            median=float(np.median(a)),
            mean=float(a.mean()),
            std=float(a.std(ddof=1)) if a.size > 1 else 0.0,
            min=float(a.min()),
            p90=float(np.percentile(a, 90)),
            max=float(a.max()),
        )

    def __str__(self) -> str:
        return f"{self.median:.2f} ± {self.std:.2f} ms"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Pipeline:
    """One thing to time: ``preprocess(run) -> batch``, ``predict(batch) -> output``,
    ``postprocess(output) -> labels``.

    ``batch`` divides every time, so figures are per image.
    """

    name: str
    preprocess: Callable[[int], Any]
    predict: Callable[[Any], Any]
    postprocess: Callable[[Any], Any] | None = None
    batch: int = 1


@dataclass
class LatencyResult:
    """Per-image statistics of each stage, and the raw model samples (ms per image)."""

    name: str
    batch: int
    model: LatencyStats
    preprocess: LatencyStats
    postprocess: LatencyStats | None
    end_to_end: LatencyStats
    ratio_to_first: float
    samples_ms: list[float] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "batch": self.batch,
            "latency_ms": self.model.to_dict(),
            "preprocess_ms": self.preprocess.to_dict(),
            "postprocess_ms": self.postprocess.to_dict() if self.postprocess else None,
            "end_to_end_ms": self.end_to_end.to_dict(),
            "ratio_to_first": self.ratio_to_first,
            "samples_ms": [round(v, 4) for v in self.samples_ms],
        }


class WallTimer:
    """Times a call with a clock in seconds (``time.perf_counter``; inject a fake one in
    tests). ``sync`` runs before each reading, e.g. ``torch.cuda.synchronize``."""

    def __init__(
        self, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None
    ) -> None:
        self.clock, self.sync = clock, sync

    def __call__(self, fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float]:
        if self.sync:
            self.sync()
        t0 = self.clock()
        out = fn(arg)
        if self.sync:
            self.sync()
        return out, (self.clock() - t0) * 1000.0


class CudaEventTimer:
    """Times a call between two CUDA events on the current stream, after a full
    device synchronisation (so work queued earlier is not billed to this call)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def __call__(self, fn: Callable[[Any], Any], arg: Any) -> tuple[Any, float]:
        cuda = self.torch.cuda
        start, stop = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        cuda.synchronize()
        start.record()
        out = fn(arg)
        stop.record()
        cuda.synchronize()
        return out, float(start.elapsed_time(stop))


# an untimed pause before each timed CPU model call: the idle OpenMP / TBB workers of the
# runtime timed just before it stop spinning on the cores (a 192x256 OpenVINO INT8 student
# timed right after the 2-thread PyTorch teacher measured 6.8 ms, its identical twin two
# rows later 4.8 ms; with a 5 ms pause or more both measured alike). A camera frame
# arrives after such a pause too.
GAP_MS = 10.0
MAX_RUNS = 100_000  # timed rounds per model: 10^9 preallocated samples and ran for days
LONG_RUN_S = 600  # a timing estimated longer than this is warned about after one round


def measure_latency(
    pipelines: Sequence[Pipeline],
    *,
    runs: int = 50,
    warmup: int = 10,
    clock: Callable[[], float] = time.perf_counter,
    model_timer: Callable | None = None,
    progress: bool = False,
    gap_ms: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[LatencyResult]:
    """Time several pipelines interleaved run by run.

    Each round runs every pipeline once; the starting pipeline rotates from round to
    round so none always runs first. ``warmup`` untimed rounds come first.

    Args:
        pipelines: what to time (see :class:`Pipeline`).
        runs: timed rounds (each pipeline gets ``runs`` samples per stage).
        warmup: untimed rounds before.
        clock: seconds clock for pre/post-processing (and the model unless
            ``model_timer`` is given).
        model_timer: ``timer(fn, arg) -> (output, ms)`` for the model stage, e.g.
            :class:`CudaEventTimer`.
        progress: a progress bar over the rounds (on stderr).
        gap_ms: an untimed pause (``sleep``, seconds) before each model call, so the
            threads of the model before it are idle (:data:`GAP_MS`).

    Returns:
        One :class:`LatencyResult` per pipeline, in input order; ``ratio_to_first`` is the
        median over rounds of this pipeline's model time over the first's in the same round.

    Raises:
        ValueError: no pipelines, or ``runs < 1``.
    """
    if not pipelines:
        raise InputError("nothing to time")
    if not 1 <= runs <= MAX_RUNS or not 0 <= warmup <= MAX_RUNS:
        raise InputError(f"runs must be in 1..{MAX_RUNS} and warmup in 0..{MAX_RUNS} (got "
                         f"{runs}, {warmup})")
    wall = WallTimer(clock)
    started = clock()
    timer = model_timer or wall
    k = len(pipelines)
    samples = {stage: [[0.0] * runs for _ in range(k)] for stage in ("pre", "model", "post")}
    rounds = tqdm(range(-warmup, runs), desc=f"timing {k} model(s)", disable=not progress,
                  leave=False)
    for r in rounds:
        for j in range(k):
            i = (j + r) % k  # rotate the starting pipeline
            p = pipelines[i]
            x, t_pre = wall(p.preprocess, r)
            if gap_ms:
                sleep(gap_ms / 1000.0)
            y, t_model = timer(p.predict, x)
            t_post = wall(p.postprocess, y)[1] if p.postprocess else 0.0
            if r >= 0:
                samples["pre"][i][r] = t_pre / p.batch
                samples["model"][i][r] = t_model / p.batch
                samples["post"][i][r] = t_post / p.batch
        if r == -warmup:  # one round done: say so when the whole will take long
            eta = (clock() - started) * (runs + warmup)
            if eta > LONG_RUN_S:
                print(f"warning: timing {k} model(s) for {warmup} + {runs} rounds will take "
                      f"about {eta / 60:.0f} min (lower --runs for a quicker figure)",
                      file=sys.stderr, flush=True)
    first = np.asarray(samples["model"][0])
    results = []
    for i, p in enumerate(pipelines):
        model = np.asarray(samples["model"][i])
        e2e = model + np.asarray(samples["pre"][i]) + np.asarray(samples["post"][i])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.median(model / first)) if first.all() else float("nan")
        results.append(
            LatencyResult(
                name=p.name,
                batch=p.batch,
                model=LatencyStats.from_samples(model),
                preprocess=LatencyStats.from_samples(samples["pre"][i]),
                postprocess=LatencyStats.from_samples(samples["post"][i])
                if p.postprocess
                else None,
                end_to_end=LatencyStats.from_samples(e2e),
                ratio_to_first=ratio,
                samples_ms=model.tolist(),
            )
        )
    return results


# ---------------------------------------------------------------- inputs and stages


def load_images(
    data: str | Path | None,
    split: str = "val",
    kind: str = "camvid",
    count: int = 8,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
) -> tuple[list[np.ndarray], str]:
    """Raw uint8 ``[H, W, 3]`` frames to feed the pipelines, and a line saying what they are.

    Real images from ``data`` (first ``count`` of the split; for ``kind="synthetic"`` the
    procedural scenes, ``data`` unused) or, when ``data`` is None and the kind is not
    synthetic, random-noise images of ``size``, said so.

    Raises:
        DataError: unreadable data (named).
    """
    from compress.data import create_source, read_image

    if data is None and kind != "synthetic":
        rng = np.random.default_rng(seed)
        frames = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]
        return frames, f"{NOISE_NOTE}, {count} frames of {size[0]}x{size[1]}"
    src = create_source(
        kind,
        str(data) if data else None,
        split,
        ignore_index=255,
        length=count,
        size=size,
        seed=seed,
    )
    n = min(count, len(src))
    if hasattr(src, "pairs"):  # files on disk: the images alone (masks are not needed here)
        frames = [read_image(src.pairs[i][0]) for i in range(n)]
    else:
        frames = [src.load(i)[0] for i in range(n)]
    h, w = frames[0].shape[:2]
    where = "synthetic scenes" if kind == "synthetic" else f"{data} [{split}]"
    return frames, f"real images: {n} frames from {where}, source size {h}x{w}"


@contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op thread count set to ``n`` for the block, then put back. The
    pre-processing stage runs under one thread: after a parallel PyTorch op its idle
    OpenMP workers spin for a while, and on a small machine they took the cores from the
    ONNX Runtime or OpenVINO model timed next (an OpenVINO INT8 model at 2 threads measured
    up to 2x slower behind a 2-thread resize)."""
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_preprocess(
    frames: Sequence[np.ndarray], size: tuple[int, int], mean, std, batch: int = 1
) -> Callable[[int], np.ndarray]:
    """``run -> float32 [batch, 3, H, W]``: frames picked in turn, resized, normalised."""
    from compress.data import normalize, resize_pair

    def preprocess(run: int) -> np.ndarray:
        picked = [frames[(run * batch + j) % len(frames)] for j in range(batch)]
        with torch_threads(1):
            return np.stack([normalize(resize_pair(f, None, size)[0], mean, std) for f in picked])

    return preprocess


def make_postprocess(out_size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """``logits [N, C, h, w]`` (or class ids ``[N, h, w]``) -> uint8/int ids ``[N, H, W]``
    at the source size: argmax, then nearest resize (same index rule as PyTorch's)."""
    from deploy.arrays import resize_ids

    def postprocess(out: np.ndarray) -> np.ndarray:
        out = np.asarray(out)
        return resize_ids(out.argmax(1) if out.ndim == 4 else out, out_size)

    return postprocess


# ---------------------------------------------------------------- memory


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since start or the last reset (``VmHWM``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- hardware


def hardware_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """What the timings ran on (:func:`deploy.machine.hardware_info`, the one machine
    description), with the versions of every registered backend's packages."""
    return machine.hardware_info(device, threads, registry.packages())


def describe_machine(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """:func:`hardware_info` with its one-line ``summary`` (what every table prints)."""
    info = hardware_info(device, threads)
    return {**info, "summary": describe_hardware(info)}


# ---------------------------------------------------------------- whole runs


@dataclass
class Target:
    """A model file to time: ``label`` names its row; ``precision`` is asked of the
    runtime (None: the backend's default; the row says what really executed)."""

    label: str
    path: Path
    backend: str
    precision: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def default_threads(load: float | None = None) -> int:
    """Physical cores this process may use, less the cores other work keeps busy (the
    1-minute load average), at least 1: more threads than free cores spin against each
    other (627 +- 1570 ms vs 75 +- 10 ms at one thread on a loaded 2-core machine)."""
    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, min(psutil.cpu_count(logical=False) or 1, allowed or 1))
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - int(load))


def timing_warnings(rows: Sequence[dict[str, Any]], load: float | None,
                    cores: int | None) -> list[str]:
    """Why the figures may not be trusted: a busy machine, or a spread (std) over half of
    the median on a row."""
    out = []
    if load is not None and cores and load > 0.75 * cores:
        out.append(f"the machine is busy (load average {load:.2f} on {cores} cores): timings "
                   "are inflated and noisy; compare ratios from one interleaved run")
    for r in rows:
        lat = r.get("latency_ms") or {}
        if lat.get("median") and lat.get("std", 0) > 0.5 * lat["median"]:
            out.append(f"{r['label']}: spread {lat['std']:.2f} ms is over half of the median "
                       f"{lat['median']:.2f} ms (batch {r['batch']}): rerun on a quiet machine "
                       "or with more --runs")
    return out


def distinct_labels(targets: Sequence[Target]) -> None:
    """Rows with the same label (two ``best.pt``) get the shortest path tail that tells
    them apart, e.g. ``kd-s0/20250101-1200/best.pt`` (``checkpoints/`` left out)."""
    def tail(p: Path, k: int) -> str:
        parts = [x for x in p.parts[:-1] if x != "checkpoints"][-k:] if k else []
        return "/".join([*parts, p.name])

    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.label, []).append(t)
    for same in groups.values():
        if len(same) < 2 or any(t.label != t.path.name for t in same):
            if len(same) > 1:  # export-dir rows: fall back to the full path
                for t in same[1:]:
                    t.label = str(t.path)
            continue
        depth = max(len(t.path.parts) for t in same)
        for k in range(1, depth + 1):
            labels = [tail(t.path.resolve(), k) for t in same]
            if len(set(labels)) == len(labels):
                break
        for t, lab in zip(same, labels):
            t.label = lab


def pin_threads(threads: int) -> None:
    """Fix the intra-op thread count for PyTorch (pre/post-processing and the torch backend);
    ONNX Runtime and OpenVINO get it through ``load_runtime(threads=...)``."""
    import torch

    torch.set_num_threads(threads)


def spec_of(path: str | Path) -> ModelSpec | None:
    """The model spec of a checkpoint, or of an artifact from the manifest beside it
    (None when neither says)."""
    path = Path(path)
    try:
        backend = registry.backend_for_path(path)
        if backend is registry.checkpoint_backend():
            from compress.models import read_checkpoint

            return read_checkpoint(path)["spec"]
        from deploy.manifest import MANIFEST_NAME, read_manifest

        if (path.parent / MANIFEST_NAME).is_file():
            return ModelSpec.from_dict(read_manifest(path.parent)["spec"])
        if backend is registry.source_backend():  # a bare ONNX: the spec embedded at export
            import onnx

            from deploy.metadata import spec_from_onnx

            return spec_from_onnx(onnx.load(str(path), load_external_data=False))
        return None
    except Exception:  # noqa: BLE001 - no spec here; loading the file will say why
        return None


def input_size(rt, size: tuple[int, int] | None, fallback: tuple[int, int]) -> tuple[int, int]:
    """The size a runtime is fed: ``size`` (``--size``), else its spec's own input size
    (a student trained at 128x192 runs at 128x192 beside a 192x256 teacher), else
    ``fallback``."""
    own = getattr(getattr(rt, "spec", None), "input_size", None)
    return tuple(size or own or fallback)


def first_run(frames: Sequence[np.ndarray], size: tuple[int, int] | None,
              fallback: tuple[int, int] = (128, 128)) -> Callable[[Any], Any]:
    """A probe for :func:`load_targets`: one prediction, so memory figures include the
    first run's allocations and a model that cannot take this input says so at once."""

    def probe(rt) -> None:
        rt.predict(make_input(rt, frames, size, fallback)[0](0))

    return probe


def make_input(rt, frames: Sequence[np.ndarray], size: tuple[int, int] | None,
               fallback: tuple[int, int] = (128, 128), batch: int = 1
               ) -> tuple[Callable[[int], np.ndarray], tuple[int, int]]:
    """``(run -> the batch rt is fed, its H x W)``: for a frame-to-map graph
    (``spec.frame_size``) the frames themselves, uint8 ``[batch, H, W, 3]`` at its frame
    size (frames of another size resized once, ahead of timing, as such a camera would
    give them: nothing but the graph is timed); else :func:`make_preprocess` at
    :func:`input_size`."""
    frame = getattr(rt.spec, "frame_size", None)
    if frame is None:
        hw = input_size(rt, size, fallback)
        return make_preprocess(frames, hw, rt.spec.mean, rt.spec.std, batch), hw
    from compress.data import resize_pair

    hw = (int(frame[0]), int(frame[1]))
    sized = [resize_pair(f, None, hw)[0] for f in frames]

    def pick(run: int) -> np.ndarray:
        return np.stack([sized[(run * batch + j) % len(sized)] for j in range(batch)])

    return pick, hw


def _gpu_used_bytes() -> int:
    import torch

    free, total = torch.cuda.mem_get_info()
    return total - free


def load_targets(
    targets: Sequence[Target],
    device: str,
    threads: int | None,
    probe: Callable[[Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """Load each target (one at a time) and measure the memory it adds.

    Returns:
        One dict per target: ``{"target", "runtime" | None, "error" | None, "memory"}``;
        ``memory`` holds ``rss_delta_mb`` (resident memory added by loading and a first
        run), ``peak_rss_mb`` (peak above the level before loading) and on CUDA
        ``gpu_mem_mb`` (device memory added) and ``torch_peak_gpu_mb``.
    """
    cuda = device.startswith("cuda")
    registry.import_libraries({t.backend for t in targets}, device)
    loaded = []
    for t in targets:
        entry: dict[str, Any] = {"target": t, "runtime": None, "error": None, "memory": {}}
        reason = registry.get_backend(t.backend).available(device)
        if reason:
            entry["error"] = reason
            loaded.append(entry)
            continue
        if cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu0 = _gpu_used_bytes()
        peak_known = reset_peak_rss()  # else the kernel's peak is the process lifetime's
        rss0 = rss_bytes()
        try:
            rt = registry.load_runtime(
                t.path, device=device, threads=threads, precision=t.precision
            )
            if probe is not None:
                probe(rt)
        except Exception as e:  # noqa: BLE001 - one row says why; the others still run
            entry["error"] = f"{FORMAT_NAMES.get(t.backend, t.backend)}: {first_line(e)}"
            loaded.append(entry)
            continue
        mem = {
            "rss_delta_mb": (rss_bytes() - rss0) / 2**20,
            "peak_rss_mb": peak_growth_mb(peak_rss_bytes(), rss0) if peak_known else None,
        }
        if cuda:
            torch.cuda.synchronize()
            mem["gpu_mem_mb"] = (_gpu_used_bytes() - gpu0) / 2**20
            mem["torch_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        entry.update(runtime=rt, memory=mem)
        loaded.append(entry)
    return loaded


def _runtime_info(rt) -> dict[str, Any]:
    """The backend details worth keeping with a row (provider, OpenVINO's float hint)."""
    info = getattr(rt, "info", None) or {}
    keep = ("providers", "inference_precision_hint", "threads", "device", "name")
    return {
        k: v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)
        for k, v in info.items()
        if k in keep
    }




@dataclass
class LatencyRow:
    """One model at one batch size on one device: a row of ``bench latency`` (and what
    report, candidates and the GPU check build on). :meth:`to_dict` is its JSON row."""

    label: str
    path: str
    backend: str
    precision: str | None
    device: str
    batch: int
    error: str | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    runtime_info: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # the target's own keys (role...)
    result: LatencyResult | None = None  # None: not timed (``error`` says why)
    ratio_to_first_label: str | None = None
    compute_ms: dict[str, float] | None = None  # CUDA only: device compute alone
    compute_note: str | None = None  # CUDA only: why there is no compute figure

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "path": self.path,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "batch": self.batch,
            "error": self.error,
            "memory": self.memory,
            "runtime_info": self.runtime_info,
            **self.info,
        }
        if self.result is not None:
            out.update({k: v for k, v in self.result.to_dict().items()
                        if k not in ("name", "batch")})
            out["ratio_to_first_label"] = self.ratio_to_first_label
            if self.device.startswith("cuda"):
                out["compute_ms"] = self.compute_ms
                if self.compute_note is not None:
                    out["compute_note"] = self.compute_note
        return out


def time_rows(
    loaded: Sequence[dict[str, Any]],
    frames: Sequence[np.ndarray],
    size: tuple[int, int] | None,
    device: str,
    *,
    runs: int,
    warmup: int,
    batch: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    fallback: tuple[int, int] = (128, 128),
) -> list[LatencyRow]:
    """Time the loaded runtimes of :func:`load_targets` interleaved at one batch size,
    each at ``size``, or at its own input size when ``size`` is None (:func:`input_size`).

    Returns:
        One :class:`LatencyRow` per entry; entries that failed to load, or fail at this
        batch size, keep their ``error`` and no figures.
    """
    rows, pipelines, order = [], [], []
    src_hw = frames[0].shape[:2]
    for entry in loaded:
        t, rt = entry["target"], entry["runtime"]
        row = LatencyRow(
            label=t.label,
            path=str(t.path),
            backend=t.backend,
            precision=getattr(rt, "precision", None) or t.precision,
            device=device,
            batch=batch,
            error=entry["error"],
            memory=entry["memory"],
            runtime_info=_runtime_info(rt),
            info=dict(t.info),
        )
        rows.append(row)
        if rt is None:
            continue
        pre, hw = make_input(rt, frames, size, fallback, batch)
        frame_to_map = rt.spec.frame_size is not None
        row.info.setdefault("input_size", list(hw))
        if frame_to_map:  # frames in, class map out: the graph is the whole pipeline
            row.info["frame_to_map"] = True
        try:  # a fixed-shape artifact may refuse this size or batch: say so on its row
            out = rt.predict(pre(0))
            if np.asarray(out).shape[0] != batch:
                raise ValueError(f"returned batch {np.asarray(out).shape[0]} for {batch}")
        except Exception as e:  # noqa: BLE001 - the row says why
            row.error = f"batch {batch} at {hw[0]}x{hw[1]}: {first_line(e)}"
            continue
        # the first run above was checked (NaN/inf refused); the timed ones are not
        pipelines.append(Pipeline(t.label, pre, functools.partial(rt.predict, check=False),
                                  None if frame_to_map else make_postprocess(src_hw), batch))
        order.append((row, rt, pre))
    if pipelines:
        timer = CudaEventTimer() if device.startswith("cuda") else None
        for (row, _, _), res in zip(
            order,
            measure_latency(pipelines, runs=runs, warmup=warmup, clock=clock, model_timer=timer,
                            gap_ms=0.0 if timer else GAP_MS),
        ):
            row.result = res
            row.ratio_to_first_label = order[0][0].label
    if pipelines and device.startswith("cuda"):
        time_device_compute(order, runs=runs, warmup=warmup)
    return rows



def time_device_compute(order, *, runs: int, warmup: int) -> None:
    """GPU compute alone, as ``trtexec`` reports it: CUDA events around the model's enqueue
    on an input already on the device, output left there (no host copies, no pre/post).
    Sets each :class:`LatencyRow`'s ``compute_ms`` for runtimes with
    :meth:`Runtime.device_call`, else its ``compute_note``."""
    compute = []
    for row, rt, pre in order:
        call = rt.device_call()
        if call is None:
            row.compute_ms = None
            row.compute_note = (f"{row.backend}: no device-only call; its model time "
                                "includes the host copies")
            continue
        upload, forward = call
        x = upload(pre(0))
        compute.append((row, Pipeline(row.label, lambda r, x=x: x, forward, None, row.batch)))
    if compute:
        results = measure_latency([p for _, p in compute], runs=runs, warmup=warmup,
                                  model_timer=CudaEventTimer())
        for (row, _), res in zip(compute, results):
            row.compute_ms = res.model.to_dict()


# ---------------------------------------------------------------- one timing run


@dataclass
class TimingSetup:
    """What the timing runs of one command share: the CPU threads (pinned), the input
    size, the raw frames every model is fed and the line saying what they are."""

    threads: int | None
    size: tuple[int, int]
    frames: list[np.ndarray]
    input_note: str
    load_before: float | None = None  # 1-minute load average before our own work
    own_size: bool = False  # each model at its own input size (``size``: the frames' and fallback)


def prepare_timing(
    size: tuple[int, int],
    *,
    threads: int | None = None,
    data: str | Path | None = None,
    split: str = "val",
    kind: str = "camvid",
    seed: int = 0,
    own_size: bool = False,
) -> TimingSetup:
    """Threads, then images: pin ``threads`` (default :func:`default_threads` for the
    load seen now) and load 8 frames of ``size`` (:func:`load_images`); ``own_size``: each
    model then runs at its own input size (``size`` only for noise frames and models
    without one)."""
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    threads = threads or default_threads(load_before)
    pin_threads(threads)
    frames, note = load_images(data, split, kind, count=8, size=size, seed=seed)
    return TimingSetup(threads, tuple(size), frames, note, load_before, own_size)


@dataclass
class TimingRun:
    """One device's timing run: a :class:`LatencyRow` per target and batch size, the
    loaded runtimes (``load_targets`` entries, for callers that go on to score them) and
    the machine it ran on (:func:`describe_machine`)."""

    device: str
    threads: int | None
    rows: list[LatencyRow]
    loaded: list[dict[str, Any]]
    hardware: dict[str, Any]

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as JSON dicts (:meth:`LatencyRow.to_dict`)."""
        return [r.to_dict() for r in self.rows]


def time_targets(
    targets: Sequence[Target],
    device: str,
    setup: TimingSetup,
    *,
    runs: int,
    warmup: int,
    batches: Sequence[int] = (1,),
    clock: Callable[[], float] = time.perf_counter,
) -> TimingRun:
    """The one timing run ``bench latency``, ``report``, ``candidates`` and ``gpu-check``
    make: load ``targets`` on ``device`` (memory measured, a first run as the probe),
    time them interleaved at each batch size, then describe the machine.

    Returns:
        A :class:`TimingRun`; a target that cannot load or run keeps its row with the
        reason.
    """
    size = None if setup.own_size else setup.size
    loaded = load_targets(targets, device, setup.threads,
                          probe=first_run(setup.frames, size, setup.size))
    rows = [row for b in batches
            for row in time_rows(loaded, setup.frames, size, device, runs=runs,
                                 warmup=warmup, batch=b, clock=clock, fallback=setup.size)]
    return TimingRun(device, setup.threads, rows, loaded, describe_machine(device, setup.threads))


def resolve_targets(
    models: Sequence[str | Path],
    backends: Sequence[str] | None = None,
    precision: str | None = None,
) -> list[Target]:
    """Files to time from the command line: checkpoints, artifacts, or export dirs.

    An export dir gives each artifact of its ``manifest.json`` (and its source checkpoint
    when it exists), filtered by ``backends``. ``precision`` goes to OpenVINO targets, the
    one backend that chooses its float precision at load time (the others run as built).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file whose backend is not among ``backends``, or nothing left to time.
    """
    if precision is not None:
        precision = registry.normalize_precision(precision)  # ValueError names the valid ones
    targets: list[Target] = []
    for m in map(Path, models):
        if not m.exists():
            raise FileNotFoundError(f"not found: {m}")
        if m.is_dir():
            from deploy.manifest import read_manifest, source_checkpoint

            manifest = read_manifest(m)
            found = []
            src = source_checkpoint(manifest)  # checked against source_sha256
            if src is not None:
                ckpt = registry.checkpoint_backend()
                found.append(
                    # the checkpoint the export came from, named where it lies (it is not
                    # in the export dir)
                    Target(str(src), src, ckpt.name, None, {"artifact_precision": ckpt.builds[0]})
                )
            for art in manifest["artifacts"]:
                b = art["backend"]
                found.append(
                    Target(
                        f"{m.name}/{art['file']}",
                        m / art["file"],
                        b,
                        precision if registry.get_backend(b).sets_precision else None,
                        {"artifact_precision": art["precision"]},
                    )
                )
            kept = [t for t in found if not backends or t.backend in backends]
            if not kept:
                raise InputError(f"{m}: no artifact for backend(s) {', '.join(backends or [])}")
            targets += kept
            continue
        b = registry.backend_for_path(m).name
        if backends and b not in backends:
            raise InputError(f"{m}: a {m.suffix} file runs on {b}, not on {', '.join(backends)}")
        targets.append(Target(m.name, m, b, precision if registry.get_backend(b).sets_precision
                              else None))
    distinct_labels(targets)  # same file name twice: tell the rows apart
    return targets


def run_latency(
    models: Sequence[str | Path],
    *,
    device: str = "cpu",
    backends: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    batches: Sequence[int] = (1,),
    data: str | Path | None = None,
    split: str = "val",
    kind: str = "camvid",
    precision: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Load, warm up and time ``models`` interleaved; the dict ``bench latency`` prints.

    Returns:
        ``{"settings", "hardware", "results": [row per model and batch]}`` (rows as in
        :meth:`LatencyRow.to_dict`).

    Raises:
        ValueError: ``--device cuda`` without a GPU, bad paths or backends.
    """
    check_device(device)
    targets = resolve_targets(models, backends, precision)
    own_size = size is None  # each model at its own input size
    if size is None:
        size = next(
            (tuple(sp.input_size) for sp in map(spec_of, (t.path for t in targets)) if sp),
            (128, 128),
        )
    setup = prepare_timing(size, threads=threads, data=data, split=split, kind=kind,
                           own_size=own_size)
    run = time_targets(targets, device, setup, runs=runs, warmup=warmup, batches=batches,
                       clock=clock)
    rows, info = run.dicts(), run.hardware
    return {
        "warnings": timing_warnings(rows, setup.load_before, info.get("cpus_allowed")
                                    or info.get("logical_cores")),
        "settings": {
            "device": device,
            "size": list(size),
            "own_size": own_size,
            "runs": runs,
            "warmup": warmup,
            "threads": setup.threads,
            "batches": list(batches),
            "input": setup.input_note,
            "timer": "CUDA events after synchronize; model = predict with host copies, "
            "compute = enqueue on a device-resident input (no copies)"
            if device.startswith("cuda")
            else "time.perf_counter",
            "process_rss_mb": rss_bytes() / 2**20,
        },
        "hardware": info,
        "results": rows,
    }


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def peak_growth_mb(peak: int, rss0: int) -> float | None:
    """Peak RSS growth while loading, in MB; None (unknown, printed "-") where the peak
    reads below the RSS before loading (the kernel's counters disagree: not a size)."""
    return (peak - rss0) / 2**20 if peak >= rss0 else None


def _mb(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_latency(result: dict[str, Any]) -> str:
    """The readable table of :func:`run_latency`."""
    s = result["settings"]
    w = max([28, *(len(r["label"]) + 2 for r in result["results"])])  # names in full
    head = (
        f"{'model':<{w}}{'backend':<12}{'prec':<6}{'batch':>5}{'median ± std':>18}"
        f"{'min':>8}{'p90':>8}{'max':>8}{'pre':>7}{'post':>7}{'ratio':>7}{'peak MB':>9}"
    )
    own = s.get("own_size")
    sizes = sorted({tuple(r["input_size"]) for r in result["results"] if r.get("input_size")})
    where = (f"input {s['size'][0]}x{s['size'][1]}" if not own or len(sizes) < 2 else
             "each model at its own input size (" + ", ".join(f"{h}x{w}" for h, w in sizes)
             + ", last column)")
    lines = [
        result["hardware"]["summary"],
        (
            f"device {s['device']}, {s['threads']} thread(s), {where}, "
            f"{s['warmup']} warm-up + {s['runs']} timed runs, interleaved; timer {s['timer']}"
        ),
        f"inputs: {s['input']}",
        (
            "ms per image; pre = resize + normalise, post = argmax + resize back; ratio = "
            "median of per-run ratios to the first model"
        ),
        "",
        head,
        "-" * len(head),
    ]
    for r in result["results"]:
        if r.get("error") or not r.get("latency_ms"):
            lines.append(
                f"{r['label']:<{w}}{r['backend']:<12}{'':<6}{r['batch']:>5}  "
                f"could not run: {r.get('error')}"
            )
            continue
        lat, mem = r["latency_ms"], r.get("memory") or {}
        post = r["postprocess_ms"]["median"] if r.get("postprocess_ms") else float("nan")
        lines.append(
            f"{r['label']:<{w}}{r['backend']:<12}{str(r['precision'] or '?')[:5]:<6}"
            f"{r['batch']:>5}{lat['median']:>10.2f} ± {lat['std']:<5.2f}{lat['min']:>8.2f}"
            f"{lat['p90']:>8.2f}{lat['max']:>8.2f}{r['preprocess_ms']['median']:>7.2f}"
            f"{post:>7.2f}{r['ratio_to_first']:>7.2f}{_mb(mem.get('peak_rss_mb')):>9}"
            + (f"  {r['input_size'][0]}x{r['input_size'][1]}"
               if own and len(sizes) > 1 and r.get("input_size") else "")
        )
        cc = r.get("cross_check")
        if cc:
            lines.append(f"{'':<{w}}cross-check: {cc['tool']}: " + (
                f"could not run ({cc['error']})" if cc.get("error") else
                f"median {cc['median_ms']:.2f} ms vs ours {_num(cc['ours_ms']):.2f} ms "
                f"({cc['compare_with']}, model only)"))
        if r.get("compute_ms"):
            c = r["compute_ms"]
            lines.append(f"{'':<{w}}GPU compute only (no host copies): {c['median']:.3f} ± "
                         f"{c['std']:.3f} ms; end to end {r['end_to_end_ms']['median']:.3f} ms")
        elif r.get("compute_note"):
            lines.append(f"{'':<{w}}{r['compute_note']}")
        if mem.get("gpu_mem_mb") is not None:
            lines.append(
                f"{'':<{w}}GPU memory +{mem['gpu_mem_mb']:.0f} MB (torch peak "
                f"{mem.get('torch_peak_gpu_mb', 0):.0f} MB)"
            )
        backend = registry.get_backend(r["backend"])
        if (
            backend.sets_precision
            and registry.canonical_precision(r.get("precision")) == "bf16"
            and registry.canonical_precision(r.get("artifact_precision", "f32")) == "f32"
        ):
            lines.append(
                f"{'':<{w}}note: {backend.label} ran this FP32 model in bf16 (the CPU's "
                "default); --precision f32 forces f32"
            )
    lines.append(f"\nprocess RSS with every model loaded: {s['process_rss_mb']:.0f} MB")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)
