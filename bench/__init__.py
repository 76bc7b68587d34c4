"""bench: measure segmentation models: MACs, latency, and the teacher-vs-student report.

Public API::

    from bench import count_flops, measure_latency, build_report, write_report
    flops = count_flops(model, (352, 480))          # FlopsResult: params, GMACs, breakdown
    report = build_report(teacher=t, student=s, data=root, artifacts=export_dir)
    write_report(report, "bench_report")            # report.md / .csv / .json + PNGs
"""

from bench.flops import FlopsResult, count_flops, count_params, flops_breakdown, size_on_disk
from bench.latency import (
    LatencyResult,
    LatencyStats,
    Pipeline,
    hardware_info,
    measure_latency,
    run_latency,
)
from bench.report import build_report, write_report

__all__ = [
    "FlopsResult",
    "LatencyResult",
    "LatencyStats",
    "Pipeline",
    "build_report",
    "count_flops",
    "count_params",
    "flops_breakdown",
    "hardware_info",
    "measure_latency",
    "run_latency",
    "size_on_disk",
    "write_report",
]
