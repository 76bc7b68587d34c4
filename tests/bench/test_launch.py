"""Studies on a cluster: `compress compare --launcher submitit` submits each recipe x seed
as a job (submitit's local executor here: real subprocess jobs on this machine, as SLURM
jobs would be), waits, then collects the runs as --collect-only does; a failed job is
named with its log."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.launch import LauncherConfig, LaunchError, submitit_launcher
from bench.study import StudyConfig, launcher_config, load_study
from compress.config import ConfigError
from segcompress.cli import app

TINY = """\
name: tiny
data: {size: [64, 64], synthetic_length: 8, synthetic_val_length: 4, batch_size: 4}
model: {decoder_channels: [16, 16, 8, 8, 8]}
train: {epochs: 1, lr: 0.003, warmup_epochs: 0, vis_every: 0, threads: 1}
"""


def _study(tmp_path, extra_recipe: str = "") -> tuple:
    (tmp_path / "run.yaml").write_text(TINY)
    study = tmp_path / "study.yaml"
    study.write_text(
        f"name: cl\noutput_dir: {tmp_path / 'studies'}\nbaseline: a\nseeds: [0]\n"
        "latency: {enabled: false}\n"
        "launcher: {kind: submitit, cluster: local, timeout_min: 10}\n"
        f"recipes:\n  - {{name: a, config: {tmp_path / 'run.yaml'}}}\n"
        f"  - {{name: b, config: {tmp_path / 'run.yaml'}, overrides: [train.lr=0.01]}}\n"
        + extra_recipe)
    return study, tmp_path / "studies" / "cl"


def test_compare_runs_each_recipe_seed_as_a_submitit_job_then_collects(tmp_path):
    pytest.importorskip("submitit", reason="needs the cluster extra: pip install -e '.[cluster]'")
    study, out = _study(tmp_path)
    r = CliRunner().invoke(app, ["compare", "-c", str(study), "-q"])
    assert r.exit_code == 0, r.output
    assert r.output.count("submitted as job") == 2 and "(local)" in r.output
    for name in ("a", "b"):
        assert (out / "runs" / name / "seed0" / "summary.json").is_file()
    result = json.loads((out / "comparison.json").read_text())
    assert {a["recipe"] for a in result["recipes"]} == {"a", "b"}
    logs = list((out / "jobs").rglob("*_log.err"))
    assert len(logs) == 2  # submitit's logs, one folder per job
    # nothing left to train: a second compare collects without submitting
    r = CliRunner().invoke(app, ["compare", "-c", str(study), "-q"])
    assert r.exit_code == 0 and "submitted" not in r.output


@pytest.mark.slow  # submitit jobs in subprocesses: ~25 s
def test_a_failed_job_is_named_with_its_log(tmp_path):
    pytest.importorskip("submitit", reason="needs the cluster extra: pip install -e '.[cluster]'")
    bad = (f"  - {{name: c, config: {tmp_path / 'run.yaml'}, "
           f"overrides: [data.kind=folder, 'data.root={tmp_path / 'nothing'}']}}\n")
    study, out = _study(tmp_path, bad)
    r = CliRunner().invoke(app, ["compare", "-c", str(study), "-q"])
    assert r.exit_code != 0
    msg = str(r.exception)
    assert isinstance(r.exception, LaunchError), r.output
    assert msg.startswith("1 of 3 study job(s) failed: c seed 0 (job ")
    assert "data folder not found" in msg and "_log.err)" in msg
    assert (out / "runs" / "a" / "seed0" / "summary.json").is_file()  # the others finished


def test_launcher_settings_from_the_file_and_the_command_line(tmp_path, monkeypatch):
    study, _ = _study(tmp_path)
    s = load_study(study)
    cfg = launcher_config(s, None, ["partition=gpu", "timeout_min=120", "gpus_per_job=1"])
    assert (cfg.kind, cfg.cluster, cfg.partition, cfg.timeout_min, cfg.gpus_per_job) == \
        ("submitit", "local", "gpu", 120, 1)
    assert launcher_config(s, "local", []).kind == "local"
    with pytest.raises(ConfigError, match="launcher.partiton: Extra inputs"):
        launcher_config(s, None, ["partiton=gpu"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        launcher_config(s, None, ["gpu"])
    with pytest.raises(ConfigError, match="launcher.kind"):
        launcher_config(StudyConfig(baseline="a", recipes=s.recipes), "ray", [])
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LaunchError, match=r"needs the submitit package: pip install -e '\.\[cluster\]'"):
        submitit_launcher(LauncherConfig(kind="submitit"), tmp_path, print)
