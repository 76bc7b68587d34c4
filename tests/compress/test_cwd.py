"""Channel-wise distillation (CWD) against a hand computation, with masking and scaling."""

import math

import pytest
import torch

from compress.losses import Distiller, TaskLoss, channel_wise_kd, valid_mask


def _hand_cwd(s, t, keep, temperature):
    """Shu et al. 2021 written out with loops: per (image, channel) a softmax over the
    kept positions, KL(teacher || student), times T^2, averaged over (image, channel)."""
    n, c = s.shape[:2]
    total, pairs = 0.0, 0
    for i in range(n):
        pos = [(y, x) for y in range(s.shape[2]) for x in range(s.shape[3]) if keep[i, y, x]]
        if not pos:
            continue
        for k in range(c):
            zs = [float(s[i, k, y, x]) / temperature for y, x in pos]
            zt = [float(t[i, k, y, x]) / temperature for y, x in pos]
            ls = math.log(sum(math.exp(v) for v in zs))
            lt = math.log(sum(math.exp(v) for v in zt))
            total += sum(math.exp(b - lt) * ((b - lt) - (a - ls)) for a, b in zip(zs, zt))
            pairs += 1
    return total / pairs * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_matches_hand_computation(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g) * 2
    keep = torch.rand(2, 4, 5, generator=g) > 0.3
    got = channel_wise_kd(s, t, keep.float()[:, None], temperature)
    assert got.item() == pytest.approx(_hand_cwd(s, t, keep, temperature), rel=1e-5)


def test_masked_positions_do_not_matter():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 6, 6, generator=g), torch.randn(1, 4, 6, 6, generator=g)
    mask = torch.ones(1, 1, 6, 6)
    mask[..., :, :2] = 0
    s2, t2 = s.clone(), t.clone()
    s2[..., :, :2] = 1e4  # huge values where the mask is 0 change nothing
    t2[..., :, :2] = -1e4
    a, b = channel_wise_kd(s, t, mask), channel_wise_kd(s2, t2, mask)
    assert torch.isfinite(b) and a.item() == pytest.approx(b.item(), rel=1e-6)


def test_zero_when_equal_and_invariant_to_channel_shift():
    s = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 1, 5, 5)
    # float32 KL of equal distributions: zero up to rounding (seen -1.1e-6 unseeded)
    assert channel_wise_kd(s, s, mask).item() == pytest.approx(0.0, abs=1e-5)
    # a spatial softmax per channel ignores a constant added to that channel
    shift = torch.tensor([3.0, -7.0, 0.5]).view(1, 3, 1, 1)
    t = torch.randn(2, 3, 5, 5)
    assert channel_wise_kd(s + shift, t, mask).item() == pytest.approx(
        channel_wise_kd(s, t, mask).item(), rel=1e-5)


def test_normalisation_mean_over_images_and_channels():
    s, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    mask = torch.ones(1, 1, 8, 8)
    one = channel_wise_kd(s, t, mask)
    # repeating images or channels leaves the mean unchanged
    assert channel_wise_kd(s.repeat(3, 1, 1, 1), t.repeat(3, 1, 1, 1),
                           mask.repeat(3, 1, 1, 1)).item() == pytest.approx(one.item(), rel=1e-5)
    assert channel_wise_kd(s.repeat(1, 2, 1, 1), t.repeat(1, 2, 1, 1), mask).item() == \
        pytest.approx(one.item(), rel=1e-5)
    # an image with no valid pixel is left out of the mean, not counted as zero
    mask2 = torch.cat([mask, torch.zeros_like(mask)])
    two = channel_wise_kd(torch.cat([s, torch.randn_like(s)]), torch.cat([t, t]), mask2)
    assert two.item() == pytest.approx(one.item(), rel=1e-5)


def test_all_ignored_gives_zero_with_gradient():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = channel_wise_kd(s, torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


def test_teacher_resized_and_gradients_finite():
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 32, 32))
    target[:, :8] = 255
    mask = valid_mask(target, 255, (8, 8))
    loss = channel_wise_kd(s, t, mask, 2.0)
    loss.backward()
    assert loss > 0 and torch.isfinite(s.grad).all()
    assert torch.all(s.grad[:, :, :2] == 0)  # rows that are all ignored get no gradient


def test_distiller_cwd_on_logits_and_features():
    task = TaskLoss(1.0, 0.0, 255)
    d = Distiller(task=task, w_cwd=3.0, cwd_temperature=4.0, cwd_levels=["logits", "decoder"],
                  student_channels={"decoder": 8}, teacher_channels={"decoder": 16})
    assert d.feature_levels == ["decoder"] and isinstance(d.adapters["decoder"], torch.nn.Conv2d)
    s_logits = torch.randn(2, 5, 16, 16, requires_grad=True)
    t_logits = torch.randn(2, 5, 16, 16)
    target = torch.randint(0, 5, (2, 16, 16))
    s_feat = {"decoder": torch.randn(2, 8, 16, 16)}
    t_feat = {"decoder": torch.randn(2, 16, 16, 16)}
    terms = d(s_logits, target, t_logits, s_feat, t_feat)
    mask = valid_mask(target, 255, (16, 16))
    want = torch.stack([channel_wise_kd(s_logits, t_logits, mask, 4.0),
                        channel_wise_kd(d.adapters["decoder"](s_feat["decoder"]),
                                        t_feat["decoder"], mask, 4.0)]).mean()
    torch.testing.assert_close(terms["cwd"], want)
    torch.testing.assert_close(terms["loss"], terms["task"] + 3.0 * terms["cwd"])
    terms["loss"].backward()
    assert d.adapters["decoder"].weight.grad.abs().sum() > 0


def test_distiller_cwd_with_class_map():
    cm = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # 3 teacher -> 2 student classes
    d = Distiller(task=TaskLoss(), w_cwd=1.0, cwd_levels=["logits"], class_map=cm)
    s, t = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 8, 8)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    mapped = torch.log(torch.einsum("nthw,ts->nshw", t.softmax(1), cm))
    want = channel_wise_kd(s, mapped, torch.ones(1, 1, 8, 8), 4.0)
    torch.testing.assert_close(d(s, target, t)["cwd"], want)
