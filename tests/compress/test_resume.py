"""--resume keeps the run record safe: only a run dir or its checkpoints/last.pt, the run's
own config.yaml, every check before a byte is written, changes refused unless asked for
(then logged and recorded), extended epochs said out loud."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from compress.cli import app
from compress.train import fit
from tests.conftest import tiny_config

runner = CliRunner()


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


@pytest.fixture
def one_epoch_run(tmp_path):
    return fit(tiny_config(tmp_path, ["train.epochs=1"]), show_progress=False).run_dir


def test_last_pt_outside_checkpoints_is_refused_and_nothing_changes(tmp_path, one_epoch_run):
    """Before: the grandparent of any .pt became the run dir and its config.yaml was
    overwritten (and its .tmp files deleted)."""
    loose = tmp_path / "mine" / "sub" / "last.pt"
    loose.parent.mkdir(parents=True)
    shutil.copy(one_epoch_run / "checkpoints" / "last.pt", loose)
    (tmp_path / "mine" / "config.yaml").write_text("name: my own notes\n")
    (tmp_path / "mine" / ".keep.tmp").write_text("mine")
    before = _snapshot(tmp_path / "mine")
    with pytest.raises(ValueError, match="not a run's checkpoints/last.pt"):
        fit(tiny_config(tmp_path, ["train.epochs=2"]), resume=loose, show_progress=False)
    assert _snapshot(tmp_path / "mine") == before


def test_changed_recipe_is_refused_before_any_byte_is_written(tmp_path, one_epoch_run):
    """Before: config.yaml was rewritten first and a changed recipe continued silently."""
    before = _snapshot(one_epoch_run)
    cfg = tiny_config(tmp_path, ["train.epochs=2", "loss.dice=0.5"])
    with pytest.raises(ValueError, match=r"loss\.dice: 0\.0 -> 0\.5.*--resume-changed"):
        fit(cfg, resume=one_epoch_run, show_progress=False)
    assert _snapshot(one_epoch_run) == before


def test_resume_changed_continues_logs_and_records_the_change(tmp_path, one_epoch_run):
    cfg = tiny_config(tmp_path, ["train.epochs=2", "train.lr=0.01"])
    fit(cfg, resume=one_epoch_run, show_progress=False, resume_changed=True)
    log = (one_epoch_run / "train.log").read_text()
    assert "resume: train.lr changed from 0.003 to 0.01 (--resume-changed)" in log
    assert "resume: train.epochs changed from 1 to 2" in log
    assert "lr schedule recomputed for 2 epochs" in log
    text = (one_epoch_run / "config.yaml").read_text()
    assert text.startswith("# resumed ") and "train.lr 0.003 -> 0.01" in text.splitlines()[0]
    assert yaml.safe_load(text)["train"]["lr"] == 0.01
    last = torch.load(one_epoch_run / "checkpoints" / "last.pt", weights_only=True)
    # the optimizer follows the new recipe (before: the old lr came back with its state)
    assert last["optimizer"]["param_groups"][0]["base_lr"] == 0.01
    assert last["epoch"] == 2


def test_fewer_epochs_than_done_is_refused(tmp_path):
    run = fit(tiny_config(tmp_path, ["train.epochs=2"]), show_progress=False).run_dir
    with pytest.raises(ValueError, match="has run 2 epochs already"):
        fit(tiny_config(tmp_path, ["train.epochs=1"]), resume=run, show_progress=False)


def test_cli_resume_reads_the_runs_own_config(tmp_path):
    """Before: the config was rebuilt from -c plus today's overrides only."""
    out = tmp_path / "runs"
    args = ["-q", f"output_dir={out}", "name=r", "data.size=[64,64]", "data.synthetic_length=8",
            "data.synthetic_val_length=4", "data.batch_size=4", "train.vis_every=0",
            "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1", "train.warmup_epochs=0"]
    r = runner.invoke(app, ["train", "-c", "configs/quickstart.yaml", *args, "w_task=1",
                            "kd.response.weight=0", "teacher.checkpoint=null"])
    assert r.exit_code == 0, r.output
    run = next((out / "r").iterdir())
    r = runner.invoke(app, ["train", "--resume", str(run), "train.epochs=2", "-q"])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["size"] == [64, 64] and cfg["train"]["epochs"] == 2
    assert "resume: train.epochs changed from 1 to 2" in (run / "train.log").read_text()
    # -c with another recipe than the run's: refused, naming the differing keys
    r = runner.invoke(app, ["train", "-c", "configs/quickstart.yaml", "--resume", str(run),
                            "train.epochs=3", "-q", "w_task=1", "kd.response.weight=0"])
    assert r.exit_code != 0 and "recipe differs" in str(r.exception)
