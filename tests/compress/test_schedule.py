"""The parts of the loop that decide what is trained on and how fast: the epoch sampler
(DDP sharding, mixture ratios), the learning-rate schedule and the optimizer groups."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from torch import nn

from compress.data import EpochSampler, build_train_set
from compress.models import create_model
from compress.schedule import build_optimizer, lr_factor
from tests.conftest import tiny_config, tiny_spec

# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize("num_samples", [None, 25])
def test_ranks_split_one_epoch_disjointly(num_samples):
    n = 10
    one = list(EpochSampler(n, seed=3, num_samples=num_samples))
    shards = [list(EpochSampler(n, seed=3, num_samples=num_samples, rank=r, world=2))
              for r in range(2)]
    per_rank = (num_samples or n) // 2
    assert [len(s) for s in shards] == [per_rank, per_rank]
    assert [len(EpochSampler(n, 3, num_samples=num_samples, rank=r, world=2)) for r in (0, 1)] == [
        per_rank, per_rank]
    assert shards[0] + shards[1] == one[: 2 * per_rank]  # rank r takes the r-th block
    if num_samples is None:
        assert sorted(one) == list(range(n))  # one epoch: each item once
        assert not set(shards[0]) & set(shards[1])
    else:
        assert Counter(one) == Counter({i: 2 for i in range(n)} | {i: 3 for i in one[20:]})


def test_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, seed=1), EpochSampler(50, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)  # a resumed run sees the same data
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(EpochSampler(50, seed=2)) != list(EpochSampler(50, seed=1))


def test_mixture_draws_each_source_at_its_ratio(tmp_path):
    cfg = tiny_config(tmp_path, ["data.synthetic_length=10",
                                 "data.extra_train=[{kind: synthetic, length: 30, weight: 3}]"])
    train = build_train_set(cfg.data, [0.5] * 3, [0.5] * 3, 255)
    assert [len(p) for p in train.parts] == [10, 30]
    sampler = EpochSampler(len(train), seed=0, weights=train.sample_weights(),
                           num_samples=20000)
    drawn = list(sampler)
    main_share = sum(i < 10 for i in drawn) / len(drawn)
    assert main_share == pytest.approx(1 / 4, abs=0.015)  # ratios 1 : 3
    per_item = Counter(drawn)
    assert set(per_item) == set(range(40))  # every item of both sources is drawn
    # within a source, items are drawn evenly: 20000 * 1/4 / 10 = 500 each for the main one
    assert all(400 < per_item[i] < 600 for i in range(10))


# ---------------------------------------------------------------- schedule


def test_warmup_is_linear_to_one():
    assert [lr_factor(s, 100, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("schedule", ["cosine", "poly", "constant"])
def test_schedules_after_warmup(schedule):
    total, warmup = 110, 10
    f = [lr_factor(s, total, warmup, schedule) for s in range(warmup, total + 1)]
    assert f[0] == 1.0
    if schedule == "constant":
        assert set(f) == {1.0}
        return
    assert all(a >= b for a, b in itertools.pairwise(f))  # never rises
    assert f[-1] == pytest.approx(0.0, abs=1e-12)
    mid = lr_factor(warmup + 50, total, warmup, schedule)
    assert mid == pytest.approx(0.5 if schedule == "cosine" else 0.5 ** 0.9)
    assert lr_factor(total + 20, total, warmup, schedule) == pytest.approx(0.0, abs=1e-12)


def test_no_warmup_starts_at_full_rate():
    assert lr_factor(0, 10, 0, "cosine") == 1.0
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


# ---------------------------------------------------------------- optimizer


def test_optimizer_groups_encoder_rest_and_adapters(tmp_path):
    cfg = tiny_config(tmp_path, ["train.lr=0.01", "train.encoder_lr_mult=0.1"])
    student = create_model(tiny_spec())
    for p in student.segmentation_head.parameters():  # a frozen part stays out
        p.requires_grad_(False)
    adapters = nn.ModuleDict({"stride8": nn.Conv2d(24, 40, 1)})
    teacher = create_model(tiny_spec(decoder_channels=[32, 16, 16, 8, 8]))
    opt = build_optimizer(student, adapters, cfg)

    groups = {round(g["lr"], 10): {id(p) for p in g["params"]} for g in opt.param_groups}
    assert set(groups) == {0.01, 0.001}
    encoder = {id(p) for p in student.encoder.parameters()}
    rest = ({id(p) for n, p in student.named_parameters()
             if not n.startswith(("encoder.", "segmentation_head."))}
            | {id(p) for p in adapters.parameters()})
    assert groups[0.001] == encoder  # the pretrained encoder at lr * encoder_lr_mult
    assert groups[0.01] == rest      # decoder + adapters at lr; frozen head absent
    assert not {id(p) for p in teacher.parameters()} & (encoder | rest)
    assert [g["base_lr"] for g in opt.param_groups] == [g["lr"] for g in opt.param_groups]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["weight_decay"] == cfg.train.weight_decay


def test_optimizer_of_a_distill_run_holds_no_teacher_weight(tmp_path, trained_teacher,
                                                            monkeypatch):
    """In a real feature-KD run: the optimizer holds the student and the adapters, and
    none of the frozen teacher's weights."""
    from compress import train

    seen = {}
    real_build, real_teacher = train.build_optimizer, train.Teacher.__init__

    def build(model, extra, cfg):
        seen["optimizer"], seen["adapters"] = real_build(model, extra, cfg), extra
        seen["student"] = model
        return seen["optimizer"]

    def teacher_init(self, model, *args, **kwargs):
        seen["teacher"] = model
        real_teacher(self, model, *args, **kwargs)

    monkeypatch.setattr(train, "build_optimizer", build)
    monkeypatch.setattr(train.Teacher, "__init__", teacher_init)
    cfg = tiny_config(tmp_path, ["train.epochs=1", f"teacher.checkpoint={trained_teacher}",
                                 "kd.feature.weight=0.5", "kd.feature.levels=[stride8]",
                                 "kd.response.weight=0.5", "data.synthetic_length=8"])
    train.fit(cfg, show_progress=False)
    held = {id(p) for g in seen["optimizer"].param_groups for p in g["params"]}
    criterion = seen["adapters"]  # the loss terms' module: feature adapters (+ task balance)
    assert len(criterion.adapters) >= 1
    assert held == ({id(p) for p in seen["student"].parameters()}
                    | {id(p) for p in criterion.parameters()})
    assert not held & {id(p) for p in seen["teacher"].parameters()}
