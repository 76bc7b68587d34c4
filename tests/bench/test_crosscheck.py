"""``bench latency --cross-check``: the vendor tool's own median beside ours."""

from __future__ import annotations

import pytest

from bench.crosscheck import _which, cross_check, parse_benchmark_app, parse_trtexec

BENCHMARK_APP_TAIL = """[ INFO ] Count:               30 iterations
[ INFO ] Duration:            268.41 ms
[ INFO ] Latency:
[ INFO ]    Median:           8.05 ms
[ INFO ]    Average:          8.93 ms
"""
TRTEXEC_TAIL = """[I] Latency: min = 0.61 ms, max = 0.93 ms, mean = 0.64 ms, median = 0.63 ms
[I] GPU Compute Time: min = 0.41 ms, max = 0.72 ms, mean = 0.43 ms, median = 0.42 ms, \
percentile(90%) = 0.44 ms
"""


def test_parsers_read_the_median_and_refuse_text_without_one():
    assert parse_benchmark_app(BENCHMARK_APP_TAIL) == 8.05
    assert parse_trtexec(TRTEXEC_TAIL) == 0.42  # GPU compute, not host latency
    with pytest.raises(ValueError, match="Median"):
        parse_benchmark_app("[ ERROR ] nothing")
    with pytest.raises(ValueError, match="GPU Compute Time"):
        parse_trtexec(TRTEXEC_TAIL.splitlines()[0])


def test_backends_without_a_vendor_tool_get_none():
    assert cross_check({"path": "m.onnx", "backend": "onnxruntime"}, (64, 64), 1, 5) is None


@pytest.mark.skipif(_which("benchmark_app") is None, reason="benchmark_app (openvino) not found")
def test_benchmark_app_times_the_same_ir(checkpoints, tmp_path):
    from deploy.pipeline import ExportConfig, export_checkpoint

    export_checkpoint(checkpoints[1], tmp_path / "ov", ExportConfig(openvino=True, val_size=4,
                                                                    synthetic_val_length=4))
    row = {"path": str(tmp_path / "ov" / "model.xml"), "backend": "openvino", "batch": 1,
           "precision": "f32", "latency_ms": {"median": 1.0}}
    cc = cross_check(row, (64, 64), threads=1, runs=20)
    assert cc["tool"] == "benchmark_app" and "error" not in cc, cc
    assert 0 < cc["median_ms"] < 1000 and cc["ours_ms"] == 1.0
