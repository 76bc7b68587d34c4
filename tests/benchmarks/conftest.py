"""Benchmarks run on request only (pyproject addopts has ``--benchmark-skip`` and
``-m 'not benchmark'``). ``--benchmark-enable`` (or ``--benchmark-only``) with
``-m benchmark`` runs them; without this hook ``--benchmark-skip`` would still win over
``--benchmark-enable``. ``-m benchmark --benchmark-disable`` runs each body once, untimed:
``scripts/test.sh`` does that after the suite, so the checks cannot rot unnoticed."""

from __future__ import annotations

import statistics
import time

import pytest

from tests.bench.helpers import make_checkpoints, make_export_dir


@pytest.hookimpl(trylast=True)  # after pytest-benchmark made its session
def pytest_configure(config):
    session = getattr(config, "_benchmarksession", None)
    if session is not None and (config.getoption("benchmark_enable")
                                or config.getoption("benchmark_disable")):
        session.skip = False


@pytest.fixture(scope="session")
def one_thread():
    """Benchmarks run on one pinned thread, so saved runs compare across machines' loads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def student_export(tmp_path_factory):
    """The tiny student's checkpoint and export dir (FP32 ONNX and OpenVINO IR)."""
    root = tmp_path_factory.mktemp("benchmarks")
    _, student = make_checkpoints(root)
    return student, make_export_dir(root / "export", student, with_engine=False, openvino=True)


def reference_workload(x, w, m):
    """Fixed work of the kinds the checks do (3x3 convolutions, a matmul, a reduction)."""
    import torch

    for _ in range(4):
        x = torch.nn.functional.conv2d(x, w, padding=1).relu()
    return (x.flatten(1) @ m).sum()


@pytest.fixture(scope="session")
def reference():
    """``reference()`` runs :func:`reference_workload` once (about as long as a step)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 16, 64, 64, generator=g), torch.randn(16, 16, 3, 3, generator=g) * 0.1
    m = torch.randn(16 * 64 * 64, 64, generator=g)

    def run():
        with torch.inference_mode():
            return reference_workload(x, w, m)

    return run


@pytest.fixture
def timed(benchmark, reference):
    """``timed(fn, args=(), rounds=30, warmup_rounds=3)``: pytest-benchmark's pedantic
    timing of ``fn``, then ``rounds`` more rounds of ``fn`` and the reference workload
    interleaved (order alternating); ``extra_info["vs_reference"]`` is the median of the
    per-round ratios, which ``bench gate`` compares: load that comes and goes hits both
    calls of a round alike."""

    def run(fn, args=(), rounds=30, warmup_rounds=3):
        out = benchmark.pedantic(fn, args=args, rounds=rounds, warmup_rounds=warmup_rounds,
                                 iterations=1)
        if benchmark.disabled:
            return out
        ratios = []
        for r in range(rounds + warmup_rounds):
            took = {}
            for name, f in (("fn", lambda: fn(*args)), ("ref", reference))[:: 1 if r % 2 else -1]:
                start = time.perf_counter()
                f()
                took[name] = time.perf_counter() - start
            if r >= warmup_rounds:
                ratios.append(took["fn"] / took["ref"])
        benchmark.extra_info["vs_reference"] = statistics.median(ratios)
        return out

    return run
