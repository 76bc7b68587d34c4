"""Workflow 002: teacher -> student with response KD, stopped and resumed with more epochs
(the run's own config.yaml, no retyping), then scored next to its teacher, packed for
shipping (float16), timed with the teacher in one report, and exported (seed 002's
"Export ONNX Models") as the ONNX file plus the frame-to-map graph a camera app feeds raw
frames to."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnxruntime as ort
import torch
import yaml

from tests.workflows.helpers import REPO, run, train_teacher

RECIPES = REPO / "configs" / "workflows" / "002_resume_export"


def test_teacher_student_resume_and_compare(tmp_path):
    out = tmp_path / "runs"
    teacher = train_teacher(RECIPES / "teacher.yaml", out, "wf002-teacher")
    r = run("compress", "distill", "-c", str(RECIPES / "student.yaml"), "-q",
            f"output_dir={out}", f"teacher.checkpoint={teacher}", "teacher.allow_weak=true",
            "train.epochs=1")
    assert r.code == 0, r.text
    student = next((out / "wf002-student").iterdir())
    untrained = torch.load(student / "checkpoints" / "untrained.pt", weights_only=True)
    assert untrained["epoch"] == 0
    # continue to 2 epochs: the run's own recipe, only the new epoch count typed
    r = run("compress", "distill", "--resume", str(student), "train.epochs=2", "-q")
    assert r.code == 0, r.text
    assert yaml.safe_load((student / "config.yaml").read_text())["train"]["epochs"] == 2
    log = (student / "train.log").read_text()
    assert "resume: train.epochs changed from 1 to 2" in log
    assert "lr schedule recomputed for 2 epochs" in log
    assert [row["epoch"] for row in csv.DictReader((student / "metrics.csv").open())] == ["1", "2"]
    # a changed loss recipe is refused and leaves the run as it was
    before = (student / "config.yaml").read_bytes()
    r = run("compress", "distill", "--resume", str(student), "train.epochs=3",
            "kd.response.temperature=9", "-q")
    assert r.code != 0 and "--resume-changed" in r.err
    assert (student / "config.yaml").read_bytes() == before
    # both models scored on one split, written apart
    scores = {}
    for name, ckpt in (("teacher", teacher), ("student", student / "checkpoints" / "best.pt")):
        r = run("compress", "eval", str(ckpt), "--data", "synthetic", "--kind", "synthetic",
                "--split", "val", "--out", str(tmp_path / f"eval_{name}"))
        assert r.code == 0, r.text
        scores[name] = json.loads((tmp_path / f"eval_{name}" / "eval.json").read_text())
    assert all(0 <= s["miou"] <= 1 for s in scores.values())
    # ship the student in float16 and compare both students with the teacher in one run
    packed = tmp_path / "student16.pt"
    r = run("compress", "pack", str(student / "checkpoints" / "best.pt"), "--out", str(packed))
    assert r.code == 0 and "sha256" in r.out, r.text
    rep = tmp_path / "report"
    r = run("bench", "report", "--teacher", str(teacher), "--student",
            str(student / "checkpoints" / "best.pt"), "--student", str(packed),
            "--data-kind", "synthetic", "--runs", "2", "--warmup", "0", "--threads", "1",
            "--max-images", "4", "--device", "cpu", "--out", str(rep), "-q")
    assert r.code == 0, r.text
    rows = {row["model"]: row for row in json.loads((rep / "report.json").read_text())["rows"]}
    full, half = rows["wf002-student PyTorch f32"], rows["student16 PyTorch f32"]
    assert full["status"] == half["status"] == "ok" and full["params"] == half["params"]
    assert abs(full["miou"] - half["miou"]) < 0.01
    assert (rep / "pareto.png").is_file()
    # export the shipped student: the model-only ONNX and the graph from a 72x96 uint8
    # camera frame to its class map, both verified at export; bench times the graph alone
    exp = tmp_path / "export"
    r = run("compress", "export", str(packed), "--out", str(exp), "--e2e", "72x96",
            "--size", "64x64", "--val-size", "4", "--threads", "1")
    assert r.code == 0, r.text
    manifest = json.loads((exp / "manifest.json").read_text())
    arts = {a["file"]: a for a in manifest["artifacts"]}
    assert arts["model_e2e.onnx"]["verification"]["agreement"] >= 0.999
    sess = ort.InferenceSession(str(exp / "model_e2e.onnx"), providers=["CPUExecutionProvider"])
    frame = np.random.default_rng(2).integers(0, 256, (1, 72, 96, 3), dtype=np.uint8)
    classes = sess.run(None, {sess.get_inputs()[0].name: frame})[0]
    assert classes.shape == (1, 72, 96) and classes.dtype == np.uint8
    assert int(classes.max()) < len(arts["model_e2e.onnx"]["class_names"])
    r = run("bench", "latency", str(exp / "model_e2e.onnx"), "--threads", "1", "--runs", "2",
            "--warmup", "0", "--json", str(tmp_path / "latency.json"))
    assert r.code == 0, r.text
    row = json.loads((tmp_path / "latency.json").read_text())["results"][0]
    assert row["frame_to_map"] is True and row["input_size"] == [72, 96]
