"""Workflow 000 with its multi-task head (configs/multitask/, docs/multitask.md), through
the real console: a depth-only source (sparse LiDAR-like depth, no masks), a segmentation
teacher, its pseudo-labels on the depth frames (the depth maps carried along), and one
`compress distill` of a segmentation + depth student on the mixture, with loss weights
0.5/0.5; then `compress eval` of its checkpoint scores both tasks."""

from __future__ import annotations

import csv
import json

from tests.workflows.helpers import REPO, run, train_teacher

RECIPES = REPO / "configs" / "multitask"
SMALL = ["data.synthetic_length=16", "data.synthetic_val_length=8", "data.batch_size=4",
         "train.epochs=2"]


def test_depth_source_pseudo_labels_multitask_student(tmp_path):
    out, data = tmp_path / "runs", tmp_path / "data"
    r = run("compress", "synthetic", "--out", str(data / "depth"), "--length", "8", "--size",
            "64x64", "--seed", "7", "--depth", "lidar", "--no-masks", "-q")
    assert r.code == 0, r.text
    assert not (data / "depth" / "masks").exists()
    teacher = train_teacher(RECIPES / "teacher.yaml", out, "mt-teacher", *SMALL,
                            "train.epochs=3")
    r = run("compress", "pseudo-label", "--teacher", str(teacher), "--images",
            str(data / "depth" / "images" / "train"), "--depth",
            str(data / "depth" / "depth" / "train"), "--out", str(data / "pseudo"),
            "--threshold", "0.5", "-q")
    assert r.code == 0, r.text
    assert len(list((data / "pseudo" / "depth").iterdir())) == 8
    depth_src = f"{{kind: folder, root: {data / 'depth'}, depth: files, masks: false"
    r = run("compress", "distill", "-c", str(RECIPES / "student.yaml"), "-q",
            f"output_dir={out}", f"teacher.checkpoint={teacher}", "teacher.allow_weak=true",
            *SMALL, "data.epoch_samples=16", "train.vis_every=2",
            f"data.depth_val={depth_src}, split: val}}",
            f"data.extra_train=[{depth_src}, weight: 0.5}}, "
            f"{{kind: folder, root: {data / 'pseudo'}, depth: files, weight: 0.5}}]")
    assert r.code == 0, r.text
    student = next((out / "mt-student").iterdir())
    rows = list(csv.DictReader((student / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:
        assert 0 <= float(row["val_miou"]) <= 1 and float(row["val_depth_rmse"]) > 0
        assert float(row["train_kd"]) > 0 and float(row["train_depth"]) > 0
        drawn = [int(row[f"drawn_{k}"]) for k in range(3)]
        assert sum(drawn) == 16 and drawn[0] > 0 and drawn[1] + drawn[2] > 0
    assert "32 train" in (student / "train.log").read_text()  # 16 + 8 depth + 8 pseudo
    assert (student / "visualizations" / "epoch_002_depth.png").is_file()
    r = run("compress", "eval", str(student / "checkpoints" / "best.pt"), "--data", "x",
            "--data-kind", "synthetic", "--out", str(tmp_path / "eval"))
    assert r.code == 0, r.text
    assert "depth RMSE" in r.text
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert 0 <= result["miou"] <= 1 and result["depth"]["rmse"] > 0
    assert result["depth"]["targets"] == "dense"
