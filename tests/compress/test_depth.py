"""Depth losses and metrics against hand-computed values: valid-pixel handling, scale
invariance of the log loss, and the KITTI-style metrics."""

from __future__ import annotations

import math

import pytest
import torch

from compress.depth_losses import berhu_loss, depth_loss_fn, l1_loss, silog_loss
from compress.metrics import DepthMeter

P = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
T = torch.tensor([[[2.0, 0.0], [3.0, 8.0]]])  # 0: no measurement


def test_l1_counts_valid_pixels_only():
    assert l1_loss(P, T).item() == pytest.approx((1 + 0 + 4) / 3)
    keep = torch.tensor([[[True, True], [True, False]]])
    assert l1_loss(P, T, keep).item() == pytest.approx(0.5)
    nan_target = T.clone()
    nan_target[0, 1, 1] = float("nan")
    assert l1_loss(P, nan_target).item() == pytest.approx(0.5)


def test_silog_hand_value_and_scale_invariance():
    p, t = torch.tensor([1.0, math.e]), torch.tensor([1.0, 1.0])
    assert silog_loss(p, t, lam=0.5).item() == pytest.approx(0.5 - 0.5 * 0.25)
    assert silog_loss(2 * t, t, lam=0.0).item() == pytest.approx(math.log(2) ** 2)
    assert silog_loss(2 * t, t, lam=1.0).item() == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(2, 8, 8, generator=g) + 0.5, torch.rand(2, 8, 8, generator=g) + 0.5
    assert silog_loss(3.7 * p, t, lam=1.0).item() == pytest.approx(
        silog_loss(p, t, lam=1.0).item(), abs=1e-6)
    assert silog_loss(3.7 * p, t, lam=0.5).item() > silog_loss(p, t, lam=0.5).item()


def test_berhu_is_l1_below_c_and_quadratic_above():
    t = torch.tensor([1.0, 1.0])
    p = torch.tensor([1.1, 2.0])  # |x| = 0.1, 1.0; c = 0.2
    assert berhu_loss(p, t).item() == pytest.approx((0.1 + (1.0 + 0.04) / 0.4) / 2)


@pytest.mark.parametrize("name", ["l1", "silog", "berhu"])
def test_no_valid_pixel_gives_zero_loss_that_still_backpropagates(name):
    pred = torch.ones(1, 4, 4, requires_grad=True)
    loss = depth_loss_fn(name)(pred, torch.zeros(1, 4, 4))
    loss.backward()
    assert loss.item() == 0 and torch.equal(pred.grad, torch.zeros(1, 4, 4))


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="'mse'.*l1, silog, berhu"):
        depth_loss_fn("mse")


def test_meter_rmse_absrel_and_deltas_over_batches():
    m = DepthMeter(max_depth=80)
    m.update(torch.tensor([1.9]), torch.tensor([1.0]))
    m.update(torch.tensor([4.0, 5.0, 7.0]), torch.tensor([4.0, 0.0, 100.0]))  # 0, >80 ignored
    r = m.compute()
    assert r["pixels"] == 2
    assert r["rmse"] == pytest.approx(math.sqrt(0.81 / 2))
    assert r["abs_rel"] == pytest.approx(0.45)
    assert (r["delta1"], r["delta2"], r["delta3"]) == (0.5, 0.5, 1.0)  # 1.9 < 1.25^3
    assert math.isnan(DepthMeter().compute()["rmse"])
