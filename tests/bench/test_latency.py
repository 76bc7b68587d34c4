"""Latency statistics and interleaving against an injected fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from bench.latency import (
    NOISE_NOTE,
    LatencyStats,
    Pipeline,
    check_device,
    load_images,
    make_postprocess,
    make_preprocess,
    measure_latency,
    resolve_targets,
)


class FakeClock:
    """Seconds that advance only when a stage 'works'; ``drift`` slows every later call."""

    def __init__(self, drift: float = 1.0):
        self.t, self.drift, self.scale = 0.0, drift, 1.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.t

    def work(self, name: str, ms: float):
        def fn(x):
            self.calls.append(name)
            self.t += ms / 1000 * self.scale
            if name.endswith("model"):
                self.scale *= self.drift
            return x

        return fn


def test_stats_known_values():
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 10.0])
    assert (s.n, s.median, s.mean, s.min, s.max) == (5, 3.0, 4.0, 1.0, 10.0)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert s.p90 == pytest.approx(7.6)  # linear between 4 (80th) and 10 (100th)
    assert str(s) == f"3.00 ± {s.std:.2f} ms"
    single = LatencyStats.from_samples([5.0])
    assert single.std == 0.0 and single.p90 == 5.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def _pipes(clock, batch=1):
    return [
        Pipeline(
            name,
            clock.work(f"{name}.pre", 0.5),
            clock.work(f"{name}.model", ms),
            clock.work(f"{name}.post", 0.25),
            batch,
        )
        for name, ms in (("a", 2.0), ("b", 6.0))
    ]


def test_stages_timed_separately_with_fake_clock():
    clock = FakeClock()
    res = measure_latency(_pipes(clock), runs=5, warmup=2, clock=clock)
    a, b = res
    assert a.model.median == pytest.approx(2.0) and a.model.std == pytest.approx(0.0)
    assert b.model.median == pytest.approx(6.0)
    assert a.preprocess.median == pytest.approx(0.5)
    assert a.postprocess.median == pytest.approx(0.25)
    assert a.end_to_end.median == pytest.approx(2.75)
    assert a.model.n == 5 and len(a.samples_ms) == 5
    assert a.ratio_to_first == pytest.approx(1.0) and b.ratio_to_first == pytest.approx(3.0)
    # warm-up rounds run but are not timed: 7 rounds of 2 pipelines x 3 stages
    assert len(clock.calls) == 7 * 2 * 3


def test_runs_are_interleaved_and_rotated():
    clock = FakeClock()
    measure_latency(_pipes(clock), runs=2, warmup=0, clock=clock)
    models = [c for c in clock.calls if c.endswith("model")]
    assert models == ["a.model", "b.model", "b.model", "a.model"]


def test_the_gap_comes_before_each_model_call_and_is_not_timed():
    clock = FakeClock()

    def sleep(seconds):  # the clock moves: a pause billed to the model would show
        clock.calls.append(f"sleep {seconds:g}")
        clock.t += seconds

    a, b = measure_latency(_pipes(clock), runs=2, warmup=1, clock=clock, gap_ms=10, sleep=sleep)
    steps = [c for c in clock.calls if not c.endswith((".pre", ".post"))]
    assert steps == ["sleep 0.01", "b.model", "sleep 0.01", "a.model"] + \
        ["sleep 0.01", "a.model", "sleep 0.01", "b.model"] + \
        ["sleep 0.01", "b.model", "sleep 0.01", "a.model"]
    assert a.model.median == pytest.approx(2.0) and b.model.median == pytest.approx(6.0)
    assert a.preprocess.median == pytest.approx(0.5)


def test_progress_bar_counts_the_rounds_on_stderr(capfd):
    clock = FakeClock()
    measure_latency(_pipes(clock), runs=3, warmup=1, clock=clock, progress=True)
    assert "timing 2 model(s)" in capfd.readouterr().err
    measure_latency(_pipes(clock), runs=3, warmup=1, clock=clock)
    assert "timing" not in capfd.readouterr().err


def test_ratio_survives_drift():
    # the machine slows by 10 % after every model call: medians drift, the ratio holds
    clock = FakeClock(drift=1.1)
    a, b = measure_latency(_pipes(clock), runs=9, warmup=0, clock=clock)
    assert a.model.max > 2 * a.model.min
    assert b.ratio_to_first == pytest.approx(3.0, rel=0.11)


def test_batch_divides_per_image():
    clock = FakeClock()
    a, _ = measure_latency(_pipes(clock, batch=4), runs=3, warmup=0, clock=clock)
    assert a.model.median == pytest.approx(0.5) and a.batch == 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        measure_latency([], runs=3)
    with pytest.raises(ValueError):
        measure_latency(_pipes(FakeClock()), runs=0)


def test_noise_inputs_say_so_and_real_inputs_are_images():
    frames, note = load_images(None, size=(32, 64), count=3)
    assert note.startswith(NOISE_NOTE) and len(frames) == 3
    assert frames[0].shape == (32, 64, 3) and frames[0].dtype == np.uint8 and frames[0].std() > 0
    frames, note = load_images(None, kind="synthetic", size=(64, 64), count=2)
    assert note.startswith("real images") and len(frames) == 2


def test_preprocess_runs_pytorch_on_one_thread_and_puts_the_count_back(monkeypatch):
    # a 2-thread PyTorch resize right before an OpenVINO / ONNX Runtime model left spinning
    # OpenMP workers on the cores that model was timed on
    import torch

    from compress import data

    seen = []
    real = data.resize_pair

    def resize(image, mask, size):
        seen.append(torch.get_num_threads())
        return real(image, mask, size)

    monkeypatch.setattr(data, "resize_pair", resize)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        frames = [np.full((20, 30, 3), 100, np.uint8)]
        x = make_preprocess(frames, (10, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(0)
        assert x.shape == (1, 3, 10, 16) and x.dtype == np.float32
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_postprocess_argmax_and_resize_back():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 2, 0, 1] = 1.0
    ids = make_postprocess((4, 4))(logits)
    assert ids.shape == (1, 4, 4)
    assert (ids[0, :2, 2:] == 2).all() and ids.sum() == 2 * 4


def test_resolve_targets(tmp_path, export_dir):
    targets = resolve_targets([export_dir])
    assert [t.backend for t in targets] == ["torch", "onnxruntime", "tensorrt"]
    assert [t.backend for t in resolve_targets([export_dir], ["onnxruntime"])] == ["onnxruntime"]
    with pytest.raises(ValueError, match="runs on onnxruntime"):
        resolve_targets([export_dir / "model.onnx"], ["openvino"])
    with pytest.raises(FileNotFoundError):
        resolve_targets([tmp_path / "none.pt"])


def test_cuda_without_gpu_is_one_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        check_device("cuda")


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    """Before: all cores, even with the machine loaded (627 +- 1570 ms vs 75 +- 10 ms)."""
    from bench.latency import default_threads

    idle = default_threads(load=0.0)
    assert idle >= 1
    assert default_threads(load=float(idle)) == 1
    assert default_threads(load=99.0) == 1


def test_busy_machine_and_large_spread_are_warned():
    from bench.latency import timing_warnings

    rows = [{"label": "a", "batch": 1, "latency_ms": {"median": 75.0, "std": 10.0}},
            {"label": "b", "batch": 1, "latency_ms": {"median": 627.0, "std": 1570.0}}]
    w = timing_warnings(rows, load=3.5, cores=2)
    assert any("busy (load average 3.50 on 2 cores)" in x for x in w)
    assert any(x.startswith("b: spread 1570.00 ms") for x in w)
    assert not any(x.startswith("a:") for x in w)
    assert timing_warnings(rows[:1], load=0.2, cores=2) == []


def test_two_best_pt_rows_are_labelled_by_their_run(tmp_path):
    """Before: both rows read 'best.pt' (then one the full path)."""
    from bench.latency import Target, distinct_labels

    a = tmp_path / "runs" / "kd-s0" / "20250101" / "checkpoints" / "best.pt"
    b = tmp_path / "runs" / "kd-s1" / "20250101" / "checkpoints" / "best.pt"
    ts = [Target("best.pt", a, "torch"), Target("best.pt", b, "torch"),
          Target("other.pt", tmp_path / "other.pt", "torch")]
    distinct_labels(ts)
    assert [t.label for t in ts] == ["kd-s0/20250101/best.pt", "kd-s1/20250101/best.pt",
                                     "other.pt"]


def test_rows_show_full_model_names_and_the_source_where_it_lies(export_dir):
    """Before: names were cut at 27 characters, and an export dir's source checkpoint read
    'export/best.pt' though it is not in the export dir."""
    from bench.latency import format_latency

    targets = resolve_targets([export_dir])
    src = targets[0]
    assert src.backend == "torch" and src.label == str(src.path)
    assert src.path.parent != export_dir and not src.label.startswith(export_dir.name + "/")
    long = "kd-response-t4-seed2/20250101-120000/best.pt"
    lat = {"median": 5.0, "std": 0.1, "min": 4.9, "p90": 5.1, "max": 5.2}
    row = {"label": long, "backend": "torch", "precision": "f32", "batch": 1,
           "latency_ms": lat, "preprocess_ms": {"median": 0.5},
           "postprocess_ms": {"median": 0.2}, "ratio_to_first": 1.0,
           "memory": {"peak_rss_mb": 300.0}}
    bad = {"label": long.replace("t4", "t8"), "backend": "onnxruntime", "batch": 1,
           "error": "boom"}
    settings = {"device": "cpu", "threads": 1, "size": [64, 64], "warmup": 1, "runs": 2,
                "timer": "perf_counter", "input": "noise", "process_rss_mb": 400.0}
    text = format_latency({"hardware": {"summary": "cpu"}, "settings": settings,
                           "results": [row, bad]})
    lines = text.splitlines()
    assert any(ln.startswith(long + " ") for ln in lines)
    assert any(ln.startswith(bad["label"] + " ") and "could not run: boom" in ln
               for ln in lines)
    head = next(ln for ln in lines if ln.startswith("model"))
    row_line = next(ln for ln in lines if ln.startswith(long + " "))
    assert head.index("backend") == row_line.index("torch") == len(long) + 2


def test_unknown_peak_rss_prints_a_dash():
    """Before: a peak read below the starting RSS printed '-0' (and None 'nan')."""
    from bench.latency import format_latency, peak_growth_mb

    assert peak_growth_mb(100 * 2**20, 101 * 2**20) is None
    assert peak_growth_mb(103 * 2**20, 101 * 2**20) == 2.0
    lat = {"median": 5.0, "std": 0.1, "min": 4.9, "p90": 5.1, "max": 5.2}
    row = {"label": "a.pt", "backend": "torch", "precision": "f32", "batch": 1,
           "latency_ms": lat, "preprocess_ms": {"median": 0.5},
           "postprocess_ms": {"median": 0.2}, "ratio_to_first": 1.0,
           "memory": {"peak_rss_mb": None}}
    settings = {"device": "cpu", "threads": 1, "size": [64, 64], "warmup": 1, "runs": 2,
                "timer": "perf_counter", "input": "noise", "process_rss_mb": 400.0}
    line = next(ln for ln in format_latency({"hardware": {"summary": "cpu"},
                                             "settings": settings, "results": [row]}
                                            ).splitlines() if ln.startswith("a.pt "))
    assert line.split()[-1] == "-" and "nan" not in line and "-0" not in line


def test_each_model_runs_at_its_own_input_size(tmp_path):
    """A student trained at a lower resolution than its teacher is timed at its own size
    (before: every model got the first one's, and a fixed-size export could not run)."""
    from bench.latency import format_latency, run_latency
    from compress.models import create_model, save_checkpoint
    from tests.conftest import tiny_spec

    paths = []
    for name, size in (("teacher.pt", (64, 96)), ("student.pt", (32, 64))):
        spec = tiny_spec(size=size)
        paths.append(save_checkpoint(tmp_path / name, create_model(spec), spec, metrics=None,
                                     epoch=0))
    res = run_latency(paths, runs=2, warmup=0, threads=1)
    sizes = [r["input_size"] for r in res["results"]]
    assert sizes == [[64, 96], [32, 64]], sizes
    assert all(r["latency_ms"] and not r.get("error") for r in res["results"])
    text = format_latency(res)
    assert "each model at its own input size (32x64, 64x96" in text, text
    fixed = run_latency(paths, size=(64, 64), runs=2, warmup=0, threads=1)
    assert [r["input_size"] for r in fixed["results"]] == [[64, 64], [64, 64]]
    assert "input 64x64" in format_latency(fixed)
