"""Workflow 000 as its team works: the teacher a Hugging Face SegFormer (a folder written
by `save_pretrained`; here a tiny random one, offline), training monitored in Weights &
Biases. Through the real console: `compress eval` of the teacher folder, `compress
distill` with `teacher.hf` and `log.wandb` (offline: nothing leaves the machine), the run's
numbers read back from the W&B run with wandb's own reader, then `--resume` continuing the
same W&B run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from tests.workflows.helpers import REPO, run

pytest.importorskip("transformers", reason="needs the hf extra: pip install -e '.[hf]'")
pytest.importorskip("wandb", reason="needs the wandb extra: pip install -e '.[wandb]'")

from tests.compress.test_hf_teacher import segformer_folder

SMALL = ["data.size=[64,64]", "data.synthetic_length=8", "data.synthetic_val_length=4",
         "data.batch_size=4", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2",
         "train.threads=1", "train.vis_every=1"]


def wandb_history(run_dir):
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                        str(run_dir)], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def test_hf_segformer_teacher_distilled_with_wandb_offline(tmp_path, monkeypatch):
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                 "WANDB_ERROR_REPORTING": "false", "WANDB_DIR": str(tmp_path),
                 "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                 "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    teacher = segformer_folder(tmp_path / "segformer-teacher")

    r = run("compress", "eval", str(teacher), "--data", "x", "--data-kind", "synthetic",
            "--out", str(tmp_path / "teacher-eval"))
    assert r.code == 0, r.text
    assert json.loads((tmp_path / "teacher-eval" / "eval.json").read_text())["images"] > 0

    out = tmp_path / "runs"
    r = run("compress", "distill", "-c", str(REPO / "configs" / "quickstart.yaml"), "-q",
            *SMALL, "name=s0", f"output_dir={out}", f"teacher.hf={teacher}",
            "teacher.checkpoint=null", "teacher.model=null", "teacher.train_epochs=0",
            "teacher.allow_weak=true", "log.wandb.project=safetrip",
            "log.wandb.mode=offline")
    assert r.code == 0, r.text
    student = next((out / "s0").iterdir())
    assert "teacher val mIoU" in (student / "train.log").read_text()
    rows = list(csv.DictReader((student / "metrics.csv").open()))
    assert float(rows[-1]["train_kd"]) > 0
    run_id = json.loads((student / "trackers.json").read_text())["wandb"]["run_id"]
    (first,) = sorted((student / "wandb").glob(f"offline-run-*-{run_id}"))
    history = wandb_history(first)
    logged = {int(h["_step"]): h["val/miou"] for h in history if "val/miou" in h}
    assert logged == {int(row["epoch"]): float(row["val_miou"]) for row in rows}
    assert any("train/kd" in h for h in history)

    r = run("compress", "distill", "-q", "--resume", str(student), "train.epochs=3")
    assert r.code == 0, r.text
    assert json.loads((student / "trackers.json").read_text())["wandb"]["run_id"] == run_id
    parts = sorted((student / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(parts) == 2  # the resumed part of the same run
    assert {int(h["_step"]) for h in wandb_history(parts[1]) if "val/miou" in h} == {3}
