import math

import pytest
import torch
import torch.nn.functional as F

from compress.classmap import kd_class_map
from compress.losses import (
    Distiller,
    TaskLoss,
    cross_entropy,
    dice_loss,
    feature_distance,
    kd_kl,
    map_classes,
    valid_mask,
)


def _kl_by_hand(s, t, T):
    """KL(softmax(t/T) || softmax(s/T)) for one pixel, with plain Python floats."""
    ps = [math.exp(v / T) for v in s]
    pt = [math.exp(v / T) for v in t]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    return sum(a * math.log(a / b) for a, b in zip(pt, ps))


def test_kd_kl_matches_hand_value_and_t_squared():
    s = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    t = torch.tensor([0.0, 2.0, 0.5]).view(1, 3, 1, 1)
    mask = torch.ones(1, 1, 1, 1)
    for T in (1.0, 2.0, 4.0):
        expected = _kl_by_hand([1, 0, -1], [0, 2, 0.5], T) * T * T
        assert kd_kl(s, t, mask, T).item() == pytest.approx(expected, rel=1e-5)


def test_kd_ignores_masked_pixels_and_normalises_per_valid_pixel():
    torch.manual_seed(0)
    s = torch.randn(1, 4, 2, 2)
    t = torch.randn(1, 4, 2, 2)
    target = torch.tensor([[[0, 255], [255, 255]]])
    mask = valid_mask(target, 255)
    got = kd_kl(s, t, mask, 2.0)
    only = kd_kl(s[..., :1, :1], t[..., :1, :1], torch.ones(1, 1, 1, 1), 2.0)
    assert got.item() == pytest.approx(only.item(), rel=1e-5)
    t2 = t.clone()
    t2[..., 1, 1] += 100  # changing an ignored pixel changes nothing
    assert kd_kl(s, t2, mask, 2.0).item() == pytest.approx(got.item(), rel=1e-6)


def test_kd_resizes_teacher_logits():
    s = torch.zeros(1, 3, 8, 8)
    t = torch.zeros(1, 3, 4, 4)
    assert kd_kl(s, t, torch.ones(1, 1, 8, 8)).item() == pytest.approx(0.0, abs=1e-6)


def test_class_map_hard_and_soft():
    # 8 teacher classes onto 6 student classes; class 7 split 70/30 over students 4 and 5
    m = [[0.0] * 6 for _ in range(8)]
    for i in range(6):
        m[i][i] = 1.0
    m[6][0] = 1.0
    m[7][4], m[7][5] = 0.7, 0.3
    cm = kd_class_map(m, [f"t{i}" for i in range(8)], [f"s{j}" for j in range(6)])
    probs = torch.zeros(1, 8, 1, 1)
    probs[0, 7] = 0.5
    probs[0, 6] = 0.25
    probs[0, 1] = 0.25
    out = map_classes(probs, cm)[0, :, 0, 0]
    assert out.tolist() == pytest.approx([0.25, 0.25, 0, 0, 0.35, 0.15])
    assert out.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [[[1.0, 0.0]] * 3, [[0.5, 0.4]] * 2])
def test_class_map_validation(bad):
    with pytest.raises(ValueError, match="class_map"):
        kd_class_map(bad, ["a", "b"], ["x", "y"])


def test_different_class_counts_need_a_map():
    with pytest.raises(ValueError, match="give kd.class_map"):
        kd_class_map(None, list("abcdefgh"), list("uvwxyz"))


def test_cross_entropy_ignores_and_weights():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert cross_entropy(logits, target, 255).item() == pytest.approx(expected, rel=1e-5)
    all_ignored = torch.full((1, 1, 2), 255)
    assert cross_entropy(logits, all_ignored, 255).item() == 0.0


def test_dice_perfect_and_binary_bce():
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-3)
    single = (target.float()[:, None] * 2 - 1) * 50  # binary task: one logit
    assert cross_entropy(single, target).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_distances_by_hand():
    s = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    t = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    m = torch.ones(1, 1, 1, 1)
    assert feature_distance(s, t, m, "cosine").item() == pytest.approx(1.0)
    assert feature_distance(s, t, m, "mse").item() == pytest.approx(1.0)
    assert feature_distance(s, s, m, "cosine").item() == pytest.approx(0.0, abs=1e-6)


def _distiller(**kw):
    return Distiller(task=TaskLoss(1.0, 0.0, 255), **kw)


def test_total_is_weighted_sum_of_named_terms_and_adapters_bridge_channels():
    torch.manual_seed(0)
    d = _distiller(w_task=0.3, w_kd=0.7, temperature=4.0, w_feat=0.5, feat_levels=["stride8"],
                   student_channels={"stride8": 8}, teacher_channels={"stride8": 24})
    assert isinstance(d.adapters["stride8"], torch.nn.Conv2d)
    s = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.randn(2, 3, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))
    sf = {"stride8": torch.randn(2, 8, 2, 2, requires_grad=True)}
    tf = {"stride8": torch.randn(2, 24, 4, 4)}  # another stride: resized
    terms = d(s, y, t, sf, tf)
    assert set(terms) == {"task", "task_ce", "kd", "feat", "loss"}  # task_ce: logged apart
    assert terms["task_ce"].item() == pytest.approx(terms["task"].item())
    total = 0.3 * terms["task"] + 0.7 * terms["kd"] + 0.5 * terms["feat"]
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_gradients_reach_student_and_adapters_never_teacher():
    from compress.models import create_model, forward_with_features
    from tests.conftest import tiny_spec

    spec = tiny_spec(classes=3)
    student = create_model(spec)
    teacher = create_model(tiny_spec(classes=3, decoder_channels=[32, 16, 16, 8, 8])).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    d = _distiller(w_kd=1.0, w_feat=1.0, feat_levels=["decoder"],
                   student_channels={"decoder": 8}, teacher_channels={"decoder": 8 * 2})
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    with torch.no_grad():
        tl, tf = forward_with_features(teacher, x, ["decoder"])
    tf = {"decoder": torch.cat([tf["decoder"], tf["decoder"]], 1)}
    sl, sf = forward_with_features(student, x, ["decoder"])
    d(sl, y, tl, sf, tf)["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert d.adapters["decoder"].weight.grad is not None
