"""Binary tasks: a one-class (foreground) dataset trains a single-logit model with BCE + Dice,
logs each term apart, scores foreground Dice / IoU and HD95 at every validation, and the
weak-teacher guard sees through an all-background teacher."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from compress.losses import kd_kl
from compress.models import create_model, save_checkpoint
from compress.train import fit
from tests.conftest import tiny_config, tiny_spec
from tests.workflows.helpers import make_folder_dataset


@pytest.fixture
def shapes(tmp_path):
    """Every synthetic shape is one foreground class 'shape'."""
    return make_folder_dataset(tmp_path / "shapes", ["shape"], {"train": 8, "val": 4},
                               remap={1: 1, 2: 1, 3: 1, 4: 1})


def _binary_cfg(tmp_path, data, extra=()):
    return tiny_config(tmp_path, ["data.kind=folder", f"data.root={data}", "loss.dice=1.0",
                                  *extra])


def test_one_class_dataset_trains_bce_plus_dice_with_terms_apart(tmp_path, shapes):
    """Before: the mask value 1 was rejected for a one-class dataset; CE and Dice were one
    logged term; no Dice / HD95 per validation."""
    run = fit(_binary_cfg(tmp_path, shapes, ["train.vis_every=1"]), show_progress=False).run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {"train_task_bce", "train_task_dice", "train_task", "val_fg_dice", "val_fg_iou",
            "val_hd95"} <= set(rows[0])
    for r in rows:
        bce, dice, task = (float(r[k]) for k in ("train_task_bce", "train_task_dice", "train_task"))
        assert bce > 0 and 0 < dice <= 1 and task == pytest.approx(bce + dice, rel=1e-3)
        assert 0 <= float(r["val_fg_dice"]) <= 1
        hd = float(r["val_hd95"])
        assert math.isnan(hd) or 0 <= hd <= 64 * 1.5
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["spec"]["classes"] == 1 and best["spec"]["class_names"] == ["shape"]
    assert (run / "visualizations" / "epoch_002.png").is_file()


def test_all_background_binary_teacher_is_refused(tmp_path, shapes):
    """Before: its mIoU (background IoU / 2, about 0.4) passed the 1/C chance guard."""
    spec = tiny_spec(classes=1, class_names=["shape"])
    model = create_model(spec)
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(-50.0)  # "background" everywhere
    t = save_checkpoint(tmp_path / "bg.pt", model, spec)
    cfg = _binary_cfg(tmp_path, shapes, ["kd.response.weight=0.5", f"teacher.checkpoint={t}",
                                         "train.epochs=1"])
    with pytest.raises(ValueError, match="foreground IoU 0.000, below half"):
        fit(cfg, show_progress=False)


def test_binary_kd_term_compares_sigmoids():
    """Before: a softmax over one logit is 1 everywhere, so binary response KD was always 0."""
    mask = torch.ones(1, 1, 4, 4)
    s, t = torch.full((1, 1, 4, 4), -2.0), torch.full((1, 1, 4, 4), 3.0)
    assert kd_kl(s, t, mask, temperature=1.0) > 0.5
    assert kd_kl(t, t, mask, temperature=1.0) == pytest.approx(0.0, abs=1e-6)


def test_eval_of_a_binary_checkpoint_reports_hd95_and_two_confusion_rows(tmp_path, shapes):
    from compress.evaluate import evaluate_checkpoint

    run = fit(_binary_cfg(tmp_path, shapes, ["train.epochs=1"]), show_progress=False).run_dir
    res = evaluate_checkpoint(run / "checkpoints" / "best.pt", shapes, "val", kind="folder",
                              out=tmp_path / "ev")
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert {"hd95", "fg_dice", "fg_iou"} <= set(saved) and res["fg_dice"] == saved["fg_dice"]
    rows = (tmp_path / "ev" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "truth\\pred,background,shape" and len(rows) == 3
