import numpy as np
import pytest
import torch

from compress.metrics import hd95, scores, update_confusion


def test_scores_from_hand_made_confusion():
    conf = np.array([[8, 2, 0], [1, 4, 0], [0, 0, 0]])  # class 2 never seen nor predicted
    r = scores(conf, ["a", "b", "c"])
    iou_a, iou_b = 8 / (10 + 9 - 8), 4 / (5 + 6 - 4)
    assert r["per_class_iou"]["a"] == pytest.approx(iou_a)
    assert r["per_class_iou"]["b"] == pytest.approx(iou_b)
    assert r["per_class_iou"]["c"] is None
    assert r["miou"] == pytest.approx((iou_a + iou_b) / 2)
    assert r["pixel_acc"] == pytest.approx(12 / 15)
    assert r["per_class_dice"]["a"] == pytest.approx(16 / 19)


def test_update_confusion_skips_ignore():
    conf = torch.zeros(2, 2, dtype=torch.int64)
    pred = torch.tensor([[[0, 1, 1]]])
    target = torch.tensor([[[0, 1, 255]]])
    update_confusion(conf, pred, target, 255)
    assert conf.tolist() == [[1, 0], [0, 1]]


def test_hd95_of_shifted_square():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(3.0)
