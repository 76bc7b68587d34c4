"""compress.devices: the one device check that compress, deploy and bench all ask."""

from __future__ import annotations

import pytest
import torch

from compress import devices
from compress.errors import InputError


def test_cpu_passes_and_unknown_devices_are_refused():
    devices.check_device("cpu")
    with pytest.raises(InputError, match=r"^--device 'tpu': expected cpu or cuda$"):
        devices.check_device("tpu")
    assert devices.cuda_missing("PyTorch", "cpu") is None
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_one_line_everywhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^--device cuda: no CUDA GPU is visible here"):
        devices.check_device("cuda:1")
    assert devices.cuda_missing("ONNX", "cuda") == "ONNX: no GPU"
    with pytest.raises(InputError, match="no CUDA GPU is available here"):
        devices.resolve_device("cuda")
    assert devices.resolve_device("auto") == torch.device("cpu")
    # the backends' available(device) ask the same check
    from deploy import runtime as registry

    for b in registry.backends():
        if "cuda" in b.devices:
            assert b.available("cuda") == f"{b.label}: no GPU"

