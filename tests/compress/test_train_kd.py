"""The KD step as the loop runs it: the teacher the set-up steps build (live, or cached
logits) never gets a gradient, never changes, never trains and is never optimised."""

from __future__ import annotations

import pytest
import torch

from compress.cache import CachedTeacher
from compress.data import dataset_classes
from compress.distill import DistillationTask, Teacher, student_spec
from compress.models import create_model, save_checkpoint
from compress.schedule import build_optimizer
from compress.train import setup_data, setup_schedule, setup_task, setup_teacher, train_one_epoch
from tests.conftest import tiny_config, tiny_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """An untrained teacher with the synthetic classes (gradients do not need a good one)
    and a wider decoder than the student's (an adapter bridges the channels)."""
    torch.manual_seed(1)
    spec = tiny_spec(synthetic_names=True, decoder_channels=[32, 16, 16, 16, 16])
    path = tmp_path_factory.mktemp("kd") / "teacher.pt"
    return save_checkpoint(path, create_model(spec), spec, metrics=None, epoch=0)


LIVE = ["kd.response.weight=0.5", "kd.feature.weight=0.5", "kd.feature.levels=[stride8,decoder]",
        "kd.cwd.weight=0.5", "kd.cwd.levels=[logits,decoder]"]
CACHED = ["kd.response.weight=0.5", "kd.cwd.weight=0.5", "kd.cache=true"]


@pytest.mark.parametrize("terms", [LIVE, CACHED], ids=["live", "cached"])
def test_teacher_never_gets_gradients_in_the_loop(tmp_path, teacher_checkpoint, terms):
    cfg = tiny_config(tmp_path, [f"teacher.checkpoint={teacher_checkpoint}", "w_task=0.5",
                                 "train.max_steps_per_epoch=2", "data.synthetic_length=8",
                                 *terms])
    assert cfg.kd.enabled
    # the set-up steps fit() runs, in its order
    torch.manual_seed(cfg.seed)
    class_names = dataset_classes(cfg.data, cfg.ignore_index)
    spec = student_spec(cfg, class_names)
    data = setup_data(cfg, spec, class_names, 0, 1)
    student = create_model(spec)
    teacher, t_spec = setup_teacher(cfg, spec, CPU)
    task = setup_task(cfg, student, spec, teacher, t_spec, CPU)
    optimizer = build_optimizer(task.student, task.criterion.adapters, cfg)
    scheduler, _, _ = setup_schedule(optimizer, cfg, len(data.loader))
    if cfg.kd.cache:
        task.teacher = CachedTeacher.build(teacher, data.train_set, tmp_path / "cache",
                                           cfg.kd.cache_scale, show=False)
    assert isinstance(teacher, Teacher) and isinstance(task, DistillationTask)
    assert task.distilling

    t_model = teacher.model
    t_params = {id(p) for p in t_model.parameters()}
    t_before = {k: v.clone() for k, v in t_model.state_dict().items()}  # BN statistics too
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    a_before = {k: v.clone() for k, v in task.criterion.adapters.state_dict().items()}
    calls = []
    t_model.segmentation_head.register_forward_hook(
        lambda m, i, o: calls.append(torch.is_grad_enabled()))

    res, step = train_one_epoch(task, data.loader, optimizer, scheduler, cfg, 0, 0, CPU,
                                show=False)

    assert step == 2 and res.terms["loss"] > 0
    assert {"kd", "cwd"} <= set(res.terms)
    if cfg.kd.cache:  # the loop read the cached logits: the teacher model did not run
        assert calls == []
    else:  # it ran at every step, never with autograd on
        assert len(calls) == 2 and not any(calls)
    assert all(p.grad is None and not p.requires_grad for p in t_model.parameters())
    assert not t_model.training  # task.train() does not reach it
    assert all(torch.equal(v, t_before[k]) for k, v in t_model.state_dict().items())
    assert not t_params & {id(p) for p in task.parameters()}
    assert not t_params & {id(p) for g in optimizer.param_groups for p in g["params"]}
    # ...while the student and the adapters (decoder: 8 -> 16 channels) did learn
    assert any(not torch.equal(v, s_before[k]) for k, v in student.state_dict().items()
               if v.is_floating_point())
    assert all(not torch.equal(v, a_before[k])
               for k, v in task.criterion.adapters.state_dict().items())
    assert bool(a_before) == bool(cfg.kd.feature.weight)


def test_a_run_without_kd_weights_has_no_teacher(tmp_path):
    cfg = tiny_config(tmp_path)
    assert not cfg.kd.enabled
    assert setup_teacher(cfg, tiny_spec(synthetic_names=True), CPU) == (None, None)
