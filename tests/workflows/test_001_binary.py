"""Workflow 001: a binary foreground task with BCE + Dice, task / KD weights given as
overrides, and the run dir a user opens: checkpoints, figures, per-term losses, Dice, HD95."""

from __future__ import annotations

import csv
import json
import math

from tests.workflows.helpers import REPO, make_folder_dataset, run, train_teacher

RECIPE = REPO / "configs" / "workflows" / "001_binary" / "student.yaml"


def test_binary_bce_dice_teacher_then_student(tmp_path):
    data = make_folder_dataset(tmp_path / "lesions", ["lesion"], {"train": 8, "val": 4, "test": 4},
                               remap={1: 1, 2: 1, 3: 1, 4: 1})
    out = tmp_path / "runs"
    teacher = train_teacher(RECIPE, out, "wf001-teacher", f"data.root={data}",
                            "name=wf001-teacher", "train.epochs=3")
    # alpha (task) / beta (KD) as command-line overrides
    r = run("compress", "distill", "-c", str(RECIPE), "-q", f"data.root={data}",
            f"output_dir={out}", f"teacher.checkpoint={teacher}", "w_task=1.0",
            "kd.response.weight=0.5", "teacher.allow_weak=true")
    assert r.code == 0, r.text
    student = next((out / "wf001-binary").iterdir())
    for f in ("config.yaml", "train.log", "metrics.csv", "summary.json", "checkpoints/best.pt",
              "checkpoints/last.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt",
              "visualizations/epoch_002.png", "visualizations/test.png", "test/eval.json"):
        assert (student / f).is_file(), f
    rows = list(csv.DictReader((student / "metrics.csv").open()))
    assert {"train_task_bce", "train_task_dice", "train_kd", "val_fg_dice", "val_hd95"} <= set(rows[0])
    for row in rows:
        assert float(row["train_task_bce"]) > 0 and 0 < float(row["train_task_dice"]) <= 1
        assert 0 <= float(row["val_fg_dice"]) <= 1
        hd = float(row["val_hd95"])
        assert math.isnan(hd) or 0 <= hd < 100
    test = json.loads((student / "test" / "eval.json").read_text())
    assert test["split"] == "test" and 0 <= test["fg_dice"] <= 1 and "hd95" in test
    r = run("compress", "eval", str(student / "checkpoints" / "best.pt"), "--data", str(data),
            "--kind", "folder", "--split", "val")
    assert r.code == 0, r.text
    assert "lesion" in r.out and "background" in r.out
