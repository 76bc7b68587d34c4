from __future__ import annotations

import pytest

from tests.bench.helpers import make_checkpoints, make_export_dir


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """(teacher.pt, student.pt): tiny Unets with random weights, 64x64 input."""
    return make_checkpoints(tmp_path_factory.mktemp("bench_models"))


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, checkpoints):
    """The student's export dir: an FP32 ONNX and a TensorRT engine entry (bytes only)."""
    return make_export_dir(tmp_path_factory.mktemp("bench_export"), checkpoints[1])
