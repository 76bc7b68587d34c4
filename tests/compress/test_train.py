import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import TrainingDiverged
from compress.models import load_model
from compress.train import fit, step_hook
from tests.conftest import REPO, interrupted_then_resumed, tiny_config

runner = CliRunner()


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state_dict"]


def test_run_dir_contents(tmp_path):
    run = fit(tiny_config(tmp_path, ["train.vis_every=1"]), show_progress=False).run_dir
    for f in ["config.yaml", "train.log", "metrics.csv", "summary.json", "checkpoints/best.pt",
              "checkpoints/last.pt", "visualizations/epoch_002.png"]:
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").iterdir())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_task", "train_loss", "lr", "val_miou"} <= set(rows[0])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert {"spec", "state_dict", "config", "metrics", "epoch"} <= set(best)
    assert "optimizer" not in best


def test_resume_after_interrupt_gives_same_weights(tmp_path):
    full = fit(tiny_config(tmp_path / "a", ["train.epochs=3"]), show_progress=False).run_dir
    # interrupt in the second epoch of a 3-epoch schedule, then resume to the end
    cfg = tiny_config(tmp_path / "b", ["train.epochs=3"])

    def interrupted_after_epoch_1(run):
        assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1

    run_b = interrupted_then_resumed(cfg, tmp_path / "b" / "runs" / "tiny",
                                     on_interrupt=interrupted_after_epoch_1)
    a, b = _weights(full), _weights(run_b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = list(csv.DictReader((full / "metrics.csv").open()))
    rb = list(csv.DictReader((run_b / "metrics.csv").open()))
    drop = {"epoch_seconds", "step_ms_median"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rb]


def test_nan_loss_stops_with_epoch_step_and_last_good_checkpoint(tmp_path):
    def poison(loss, epoch, step):
        return loss * float("nan") if epoch == 1 and step == 6 else loss

    with step_hook(poison), pytest.raises(TrainingDiverged) as e:
        fit(tiny_config(tmp_path), show_progress=False)
    msg = str(e.value)
    assert "epoch 2" in msg and "step 6" in msg and "last.pt" in msg
    good = Path(msg.split("last good checkpoint: ")[1])
    assert load_model(good)(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


def test_cli_train_distill_eval_end_to_end(tmp_path, trained_teacher):
    out = tmp_path / "runs"
    common = [f"output_dir={out}", "data.size=[64,64]", "data.synthetic_length=16",
              "data.synthetic_val_length=8", "data.batch_size=4",
              "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1", "train.vis_every=1"]
    cfg = REPO / "configs" / "quickstart.yaml"
    r = runner.invoke(app, ["train", "-c", str(cfg), "-q", *common, "w_task=1",
                            "kd.response.weight=0"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].startswith("run dir: ")
    r = runner.invoke(app, ["distill", "-c", str(cfg), "-q", *common,
                            f"teacher.checkpoint={trained_teacher}", "kd.feature.weight=0.5",
                            "kd.feature.levels=[stride8,decoder]"])
    assert r.exit_code == 0, r.output
    run = Path(r.output.strip().splitlines()[-1].removeprefix("run dir: "))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[0]["train_kd"]) > 0 and float(rows[0]["train_feat"]) > 0
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert not any(k.startswith(("adapters", "teacher")) for k in best["state_dict"])
    assert best["teacher_val"]["miou"] > 0.2
    r = runner.invoke(app, ["eval", str(run / "checkpoints" / "best.pt"), "--data", "unused",
                            "--kind", "synthetic", "--split", "val", "--flip"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "checkpoints" / "eval_best_val" / "eval.json").read_text())
    assert {"miou", "per_class_iou", "pixel_acc", "dice"} <= set(result)
    assert set(result["per_class_iou"]) == {"background", "disc", "box", "triangle", "ring"}
    assert (run / "checkpoints" / "eval_best_val" / "confusion.csv").is_file()


def test_distill_refuses_config_without_kd(tmp_path):
    r = runner.invoke(app, ["distill", "-c", str(REPO / "configs" / "quickstart.yaml"),
                            "kd.response.weight=0", "w_task=1"])
    assert r.exit_code != 0
    said = " ".join(r.output.split()).lower()
    assert "no kd weight is set" in said and "kd.response.weight" in said


def test_every_command_has_help():
    for cmd in ["train", "distill", "eval"]:
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


def test_console_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 1\n")
    p = subprocess.run([sys.executable, "-m", "compress.cli", "train", "-c", str(bad)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "unknown key 'train.epochz'" in p.stderr and str(bad) in p.stderr


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """torchrun with 2 CPU processes: both ranks train on halves of each batch sequence,
    rank 0 writes the run; the result loads and the loss went down."""
    args = [f"output_dir={tmp_path / 'runs'}", "name=ddp", "data.size=[64,64]",
            "data.synthetic_length=16", "data.synthetic_val_length=8", "data.batch_size=2",
            "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2", "train.threads=1",
            "w_task=1", "kd.response.weight=0", "train.vis_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        "--master_port=29531", "-m", "compress.cli", "train", "-q", "-c",
                        str(REPO / "configs" / "quickstart.yaml"), *args],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(runs) == 1, "both ranks must share rank 0's run dir"
    rows = list(csv.DictReader((runs[0] / "metrics.csv").open()))
    assert len(rows) == 2
    assert load_model(runs[0] / "checkpoints" / "best.pt") is not None

    # the same recipe in one process, with the 2-process run's global batch (2 x 2): the
    # same images per epoch from the same initial weights, so the losses agree closely
    # (not exactly: each rank's BatchNorm sees its own half-batch, and the ranks take
    # the halves of the epoch's order where one process takes it in sequence)
    from compress.config import load_config

    single = fit(load_config(REPO / "configs" / "quickstart.yaml",
                             [*args, "name=single", "data.batch_size=4"]), show_progress=False).run_dir
    one = list(csv.DictReader((single / "metrics.csv").open()))
    assert len(one) == len(rows)
    for r2, r1 in zip(rows, one):
        assert float(r2["train_loss"]) == pytest.approx(float(r1["train_loss"]), rel=0.05), (
            rows, one)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(one[-1]["train_loss"]) < float(one[0]["train_loss"])
