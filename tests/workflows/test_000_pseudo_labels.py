"""Workflow 000 (without its multi-task head, another issue): a teacher, its confident
pseudo-labels on unlabelled images, and a student trained on labelled + pseudo-labelled
data mixed by weight - through the real console."""

from __future__ import annotations

import csv
import json

from PIL import Image

from compress.data import SyntheticSource
from tests.workflows.helpers import REPO, run, train_teacher

RECIPES = REPO / "configs" / "workflows" / "000_pseudo_labels"


def test_teacher_pseudo_labels_mixture_student(tmp_path):
    out = tmp_path / "runs"
    teacher = train_teacher(RECIPES / "teacher.yaml", out, "wf000-teacher")
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    src = SyntheticSource(8, (64, 64), seed=77)
    for i in range(8):
        Image.fromarray(src.load(i)[0]).save(unlabelled / f"frame_{i:03d}.png")
    pseudo = tmp_path / "pseudo"
    r = run("compress", "pseudo-label", "--teacher", str(teacher), "--images", str(unlabelled),
            "--out", str(pseudo), "--threshold", "0.7", "-q")
    assert r.code == 0, r.text
    stats = json.loads((pseudo / "stats.json").read_text())
    assert len(list((pseudo / "masks").glob("*.png"))) == 8
    assert (pseudo / "classes.txt").read_text().split() == \
        ["background", "disc", "box", "triangle", "ring"]
    assert 0 <= stats["kept_fraction"] <= 1
    r = run("compress", "train", "-c", str(RECIPES / "student.yaml"), "-q", f"output_dir={out}",
            f"data.extra_train=[{{kind: folder, root: {pseudo}, weight: 1.0}}]")
    assert r.code == 0, r.text
    student = next((out / "wf000-student").iterdir())
    rows = list(csv.DictReader((student / "metrics.csv").open()))
    assert len(rows) == 2 and all(0 <= float(r["val_miou"]) <= 1 for r in rows)
    log = (student / "train.log").read_text()
    assert "24 train" in log  # 16 labelled + 8 pseudo-labelled
    drawn = [(int(r["drawn_0"]), int(r["drawn_1"])) for r in rows]  # the mixture per epoch
    assert all(a + b == 16 and a > 0 and b > 0 for a, b in drawn)
