"""Workflow 003: an 8-class teacher distilled into a 6-class student through a class map with
a 70/30 split, T = 2, alpha = 0.7, a separate backbone lr - through the real console."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.workflows.helpers import REPO, make_folder_dataset, run, train_teacher

RECIPES = REPO / "configs" / "workflows" / "003_class_map"
T8 = ["Tree", "Rangeland", "Cropland", "Developed", "Road", "Bareland", "Water", "Background"]
S6 = ["Background", "Forest", "Grassland", "Cropland", "Settlement", "SemiNatural"]


def test_8_to_6_classes_with_a_soft_split(tmp_path):
    # the same scenes labelled in both vocabularies (synthetic classes 0..4)
    d8 = make_folder_dataset(tmp_path / "d8", T8, {"train": 8, "val": 4},
                             remap={0: 7, 1: 0, 2: 1, 3: 2, 4: 3})
    d6 = make_folder_dataset(tmp_path / "d6", S6, {"train": 8, "val": 4},
                             remap={0: 0, 1: 1, 2: 2, 3: 3, 4: 5})
    out = tmp_path / "runs"
    teacher = train_teacher(RECIPES / "teacher.yaml", out, "wf003-teacher", f"data.root={d8}")
    r = run("compress", "distill", "-c", str(RECIPES / "student.yaml"), "-q",
            f"data.root={d6}", f"output_dir={out}", f"teacher.checkpoint={teacher}",
            "teacher.allow_weak=true")
    assert r.code == 0, r.text
    student = next((out / "wf003-student").iterdir())
    log = (student / "train.log").read_text()
    assert "label map: 8 teacher -> 6 student classes" in log
    assert "Grassland        <- Rangeland 0.70" in log
    assert "SemiNatural      <- Rangeland 0.30, Bareland 1.00" in log
    miou = float(log.split("teacher val mIoU ")[1].split()[0])
    assert 0 <= miou <= 100
    rows = list(csv.DictReader((student / "metrics.csv").open()))
    assert len(rows) == 2 and {"train_kd", "train_task", "val_miou", "lr"} <= set(rows[0])
    assert all(0 <= float(r["val_miou"]) <= 1 for r in rows)
    best = torch.load(student / "checkpoints" / "best.pt", weights_only=True)
    assert best["spec"]["classes"] == 6 and best["spec"]["class_names"] == S6
    last = torch.load(student / "checkpoints" / "last.pt", weights_only=True)
    lrs = sorted(g["base_lr"] for g in last["optimizer"]["param_groups"])
    assert lrs == pytest.approx([6e-5, 6e-4])  # backbone at a tenth of the main lr
    assert (student / "visualizations" / "epoch_002.png").is_file()
