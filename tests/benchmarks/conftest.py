"""Benchmarks run on request only (pyproject addopts has ``--benchmark-skip`` and
``-m 'not benchmark'``). ``--benchmark-enable`` (or ``--benchmark-only``) with
``-m benchmark`` runs them; without this hook ``--benchmark-skip`` would still win over
``--benchmark-enable``. ``-m benchmark --benchmark-disable`` runs each body once, untimed:
``scripts/test.sh`` does that after the suite, so the checks cannot rot unnoticed."""

from __future__ import annotations

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
