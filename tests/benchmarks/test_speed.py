"""Speed regression checks (pytest-benchmark); see docs/bench.md for the workflow.

    pytest tests/benchmarks -m benchmark --benchmark-enable --benchmark-json old.json
    pytest tests/benchmarks -m benchmark --benchmark-enable --benchmark-json new.json
    bench gate old.json new.json      # each median over the same run's reference workload
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.bench.helpers import SIZE

pytestmark = pytest.mark.benchmark

FILES = {"torch": None, "onnxruntime": "model.onnx", "openvino": "model.xml"}


def test_reference_workload(benchmark, reference, one_thread):
    """The yardstick of ``bench gate`` (the other checks time themselves against it round
    by round: the ``timed`` fixture); its own median says how fast this machine is now."""
    out = benchmark.pedantic(reference, rounds=30, warmup_rounds=3, iterations=1)
    assert torch.isfinite(out)


@pytest.mark.parametrize("backend", list(FILES))
def test_student_forward(benchmark, timed, backend, student_export, one_thread):
    """Student forward pass, batch 1 at 64x64, per backend (OpenVINO forced to f32)."""
    from deploy.runtime import load_runtime

    student, export = student_export
    path = student if FILES[backend] is None else export / FILES[backend]
    rt = load_runtime(
        path, device="cpu", threads=one_thread, precision="f32" if backend == "openvino" else None
    )
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    benchmark.extra_info.update(backend=rt.backend, precision=rt.precision, size=list(SIZE))
    out = timed(rt.predict, args=(x,))
    assert out.shape == (1, 5, *SIZE)


def test_student_forward_tensorrt(benchmark):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU")
    pytest.skip(
        "needs an engine built with `compress export --trt` (deploy); time it with "
        "`bench latency model.engine --device cuda`"
    )


def _time_step(timed, distiller, *inputs) -> dict:
    """Time one Distiller forward + backward on ``inputs`` (student tensors need grad)."""
    flat = [v for x in inputs for v in (x.values() if isinstance(x, dict) else [x])]
    student = [x for x in flat if isinstance(x, torch.Tensor) and x.requires_grad]

    def step():
        for x in student:
            x.grad = None
        terms = distiller(*inputs)
        terms["loss"].backward()
        return terms

    return timed(step)


def _logits(g, requires_grad=False):
    return torch.randn(8, 5, *SIZE, generator=g, requires_grad=requires_grad)


def test_kd_loss_step(timed, one_thread):
    """One Distiller step (task CE + response KD), forward and backward, [8, 5, 64, 64]."""
    from compress.losses import Distiller, TaskLoss

    g = torch.Generator().manual_seed(0)
    student, teacher = _logits(g, True), _logits(g)
    target = torch.randint(0, 5, (8, *SIZE), generator=g)
    distiller = Distiller(task=TaskLoss(), w_task=0.5, w_kd=0.5, temperature=2.0)
    terms = _time_step(timed, distiller, student, target, teacher)
    assert {"task", "kd", "loss"} <= set(terms) and torch.isfinite(terms["loss"])


# each literature term alone (no task loss), so its cost per step reads on its own
KD_TERMS = {
    "dist": {"w_dist": 1.0},
    "boundary": {"w_boundary": 1.0, "boundary_width": 2},
    "relation": {"w_relation": 1.0, "relation_level": "decoder", "relation_pixels": 256,
                 "student_channels": {"decoder": 16}, "teacher_channels": {"decoder": 32}},
}


@pytest.mark.parametrize("term", list(KD_TERMS))
def test_kd_term_step(benchmark, timed, one_thread, term):
    """One step of one KD term, forward and backward: [8, 5, 64, 64] logits; relation on
    [8, 16 -> 32 (adapter), 64, 64] decoder features, 256 pixels per image, cross-image."""
    from compress.losses import Distiller, TaskLoss

    g = torch.Generator().manual_seed(0)
    student, teacher = _logits(g, True), _logits(g)
    target = torch.randint(0, 5, (8, *SIZE), generator=g)
    s_feats = {"decoder": torch.randn(8, 16, *SIZE, generator=g, requires_grad=True)}
    t_feats = {"decoder": torch.randn(8, 32, *SIZE, generator=g)}
    distiller = Distiller(task=TaskLoss(), w_task=0.0, **KD_TERMS[term])
    benchmark.extra_info.update(term=term, size=list(SIZE), batch=8)
    terms = _time_step(timed, distiller, student, target, teacher, s_feats, t_feats)
    assert set(terms) == {term, "loss"} and torch.isfinite(terms["loss"])


def test_data_loading(timed, one_thread):
    """A training batch of 8 synthetic 64x64 samples with augmentation, through collate."""
    from compress.config import DataConfig
    from compress.data import build_train_set, collate
    from compress.models import IMAGENET_MEAN, IMAGENET_STD

    dcfg = DataConfig(kind="synthetic", size=SIZE, synthetic_length=8, batch_size=8)
    ds = build_train_set(dcfg, IMAGENET_MEAN, IMAGENET_STD, ignore_index=255)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)

    batch = timed(lambda: next(iter(loader)), rounds=10, warmup_rounds=1)
    assert batch["image"].shape == (8, 3, *SIZE)
