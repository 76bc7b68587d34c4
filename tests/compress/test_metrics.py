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


def test_score_predictor_against_a_hand_computed_confusion():
    """Logits at half the mask size (resized bilinearly), class ids at full size, and a
    one-channel binary logit all go through the one loop; ignored pixels are left out."""
    from compress.metrics import predicted_ids, score_predictor

    masks = np.array([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]])
    ids = np.array([[[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 0, 0], [2, 2, 1, 1]]])
    # truth 0: 4 px (3 -> 0, 1 -> 1); truth 1: 4 px (all 1); truth 2: 4 px (3 -> 2, 1 -> 0)
    want = torch.tensor([[3, 1, 0], [0, 4, 0], [1, 0, 3]])
    res, conf = score_predictor(lambda x: ids, [(None, masks)], ["a", "b", "c"], 255)
    assert torch.equal(conf, want)
    iou = [3 / (4 + 4 - 3), 4 / (4 + 5 - 4), 3 / (4 + 3 - 3)]
    assert res["miou"] == pytest.approx(sum(iou) / 3)

    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 1] = 5.0  # every pixel class 1 after resizing to 4x4
    _, conf = score_predictor(lambda x: logits, [(None, masks)], ["a", "b", "c"], 255)
    assert conf[:, 1].tolist() == [4, 4, 4] and int(conf.sum()) == 12
    binary = predicted_ids(torch.tensor([[[[-1.0, 2.0]]]]), (1, 2))
    assert binary.tolist() == [[[0, 1]]]
