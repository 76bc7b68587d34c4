"""Cached teacher logits: they follow the image's crop/scale/flip, are reused only when
everything matches, and a distilled checkpoint holds the student alone."""

import numpy as np
import pytest
import torch
from torch import nn

from compress.cache import CachedTeacher
from compress.data import build_train_set, collate
from compress.distill import Teacher
from compress.models import load_model, make_spec
from compress.train import fit
from tests.conftest import tiny_config, tiny_spec


class Counting(nn.Module):
    """A pointwise (1x1 conv) teacher: it commutes with resizing, cropping and flipping,
    so warped cached logits must equal the logits of the augmented image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def _setup(tmp_path, levels=()):
    cfg = tiny_config(tmp_path, ["data.color_jitter=0", "data.scale_range=[0.6,1.4]",
                                 "data.extra_train=[{kind: synthetic, length: 4, seed: 5}]"])
    spec = make_spec(arch="Unet", encoder="tu-efficientnet_lite0", classes=5, input_size=(64, 64))
    train_set = build_train_set(cfg.data, spec.mean, spec.std, 255, seed=0)
    model = Counting()
    return Teacher(model, spec, spec, list(levels)), model, train_set


def test_cached_logits_follow_the_augmentation(tmp_path):
    teacher, _model, train_set = _setup(tmp_path)
    cached = CachedTeacher.build(teacher, train_set, tmp_path / "cache", scale=1.0, show=False)
    assert cached.logits.dtype == np.float16 and cached.logits.shape == (20, 5, 64, 64)
    flips = 0
    for epoch in range(2):
        train_set.set_epoch(epoch)
        batch = collate([train_set[i] for i in (0, 7, 16, 19)])  # both parts of the mixture
        assert batch["index"].tolist() == [0, 7, 16, 19]
        got, feats = cached(batch["image"], batch)
        want = teacher(batch["image"], batch)[0]
        valid = (batch["mask"] != 255)[:, None].expand_as(want)
        assert feats == {} and got.shape == want.shape
        assert (got - want)[valid].abs().max() < 0.05
        for j, geo in enumerate(batch["geometry"]):
            if geo["flip"]:  # a warp that forgets the flip is far off: the test has teeth
                flips += 1
                assert (got[j].flip(-1) - want[j])[valid[j]].abs().max() > 0.1
    assert flips > 0
    # validation batches (no geometry) and predict() use the live teacher
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(cached(x, {"image": x})[0], teacher.predict(x))
    torch.testing.assert_close(cached.predict(x), teacher.predict(x))


def test_cache_is_reused_only_when_it_matches(tmp_path):
    teacher, model, train_set = _setup(tmp_path)
    CachedTeacher.build(teacher, train_set, tmp_path / "cache", scale=0.5, batch_size=8, show=False)
    first = model.calls
    assert first == 3  # 16 + 4 images in batches of 8 (per part)
    again = CachedTeacher.build(teacher, train_set, tmp_path / "cache", scale=0.5, show=False)
    assert model.calls == first and again.logits.shape == (20, 5, 32, 32)
    with torch.no_grad():
        model.conv.bias += 1.0  # other teacher weights: rebuilt
    CachedTeacher.build(teacher, train_set, tmp_path / "cache", scale=0.5, show=False)
    assert model.calls > first
    n = model.calls
    CachedTeacher.build(teacher, train_set, tmp_path / "cache", scale=0.25, show=False)
    assert model.calls > n
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_a_failed_cache_build_leaves_no_temp_file(tmp_path):
    """An error (or Ctrl-C) part-way through the teacher pass removes the half-written
    logits: a failed run does not litter its run dir."""
    teacher, model, train_set = _setup(tmp_path)

    def fail_on_second_batch(x):
        if model.calls:
            raise KeyboardInterrupt
        model.calls += 1
        return model.conv(x)

    model.forward = fail_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        CachedTeacher.build(teacher, train_set, tmp_path / "cache", batch_size=4, show=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_feature_kd_with_cache_is_refused(tmp_path):
    teacher, _, train_set = _setup(tmp_path, levels=["decoder"])
    with pytest.raises(ValueError, match="kd.cache stores teacher logits only"):
        CachedTeacher.build(teacher, train_set, tmp_path / "cache", show=False)


def test_distill_with_cache_end_to_end(trained_teacher, tmp_path):
    cfg = tiny_config(tmp_path, ["train.epochs=1", f"teacher.checkpoint={trained_teacher}",
                                 "teacher.allow_weak=true", "w_task=0.5", "kd.response.weight=0.5",
                                 "kd.cwd.weight=1", "kd.cwd.levels=[logits]", "kd.cache=true"])
    run = fit(cfg, show_progress=False).run_dir
    assert (run / "cache" / "logits.npy").is_file() and (run / "cache" / "meta.json").is_file()
    row = (run / "metrics.csv").read_text().splitlines()
    assert "train_kd" in row[0] and "train_cwd" in row[0]
    bad = tiny_config(tmp_path, ["train.epochs=1", f"teacher.checkpoint={trained_teacher}",
                                 "teacher.allow_weak=true", "kd.feature.weight=1", "kd.cache=true"])
    with pytest.raises(ValueError, match="kd.cache=false"):
        fit(bad, show_progress=False)


def test_distill_checkpoint_holds_the_student_alone(trained_teacher, tmp_path):
    # student decoder ends with 4 channels, the teacher's with 8: a learnable 1x1 adapter
    cfg = tiny_config(tmp_path, ["train.epochs=1", "model.decoder_channels=[16,16,8,8,4]",
                                 f"teacher.checkpoint={trained_teacher}", "teacher.allow_weak=true",
                                 "kd.feature.weight=1", "kd.feature.levels=[stride8,decoder]",
                                 "kd.cwd.weight=1", "kd.cwd.levels=[logits,decoder]"])
    run = fit(cfg, show_progress=False).run_dir
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("adapters.decoder") for k in last["distiller_state"])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    keys = set(best["state_dict"])
    assert not [k for k in keys if k.startswith(("adapters", "teacher", "distiller", "module."))]
    assert "distiller_state" not in best and "teacher" not in best["spec"]
    model = load_model(run / "checkpoints" / "best.pt", strict=True)
    assert keys == set(model.state_dict())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def _named(*names: str):
    """A spec whose only part that matters here is its class names."""
    return tiny_spec(classes=len(names), class_names=list(names))


def test_label_map_preflight():
    from compress.classmap import kd_class_map
    from compress.distill import check_label_maps

    same = _named("Sky", "Road")
    assert check_label_maps(same, same, None) == ["label map: identity, 2 classes"]
    with pytest.raises(ValueError, match="teacher 'Sky' / student 'Road'"):
        check_label_maps(same, _named("Road", "Sky"), None)
    generic = check_label_maps(_named("class_0", "class_1"), same, None)
    assert "assumed the same order" in generic[0]
    cm = kd_class_map([[1, 0, 0], [0, 0.7, 0.3], [1, 0, 0]], ["a", "b", "c"], ["x", "y", "z"])
    lines = check_label_maps(_named("a", "b", "c"), _named("x", "y", "z"), cm)
    assert lines[1].split() == ["x", "<-", "a", "1.00,", "c", "1.00"]
    assert "y" in lines[2] and "b 0.70" in lines[2] and "b 0.30" in lines[3]
    cm2 = kd_class_map([[1, 0], [1, 0]], ["a", "b"], ["x", "y"])
    assert "nothing" in check_label_maps(_named("a", "b"), _named("x", "y"), cm2)[2]
