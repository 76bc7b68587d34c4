"""Experiment trackers (``log.wandb``, ``log.mlflow``, TensorBoard): a tiny synthetic training
through the CLI, the logged values read back with each library's own reader and compared
with the run's metrics.csv; a resume continues the same tracker run."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from compress import trackers
from compress.cli import app
from compress.config import ConfigError
from tests.conftest import REPO

runner = CliRunner()

QUICK = str(REPO / "configs" / "quickstart.yaml")
TINY = ["name=trk", "data.size=[64,64]", "data.synthetic_length=8", "data.synthetic_val_length=4",
        "data.batch_size=4", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2",
        "train.threads=1", "train.vis_every=1", "w_task=1", "kd.response.weight=0"]


def _train(tmp_path: Path, *extra: str) -> Path:
    r = runner.invoke(app, ["train", "-q", "-c", QUICK, *TINY, f"output_dir={tmp_path / 'runs'}",
                            *extra])
    assert r.exit_code == 0, r.output
    return Path(r.output.strip().splitlines()[-1].removeprefix("run dir: "))


def _resume(run: Path, *extra: str) -> None:
    r = runner.invoke(app, ["train", "-q", "--resume", str(run), *extra])
    assert r.exit_code == 0, r.output


def _refusal(r) -> str:
    """The one line ``compress`` prints for a refused run (``error: ...``)."""
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError), r.output
    assert "\n" not in str(r.exception)
    return str(r.exception)


def _val_miou(run: Path) -> dict[int, float]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return {int(r["epoch"]): float(r["val_miou"]) for r in rows}


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """No network, no prompt, nothing in ~/.config: wandb as a CI machine without login."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # the run sets it: restored afterwards


def _wandb_records(run_dir: Path) -> list[dict]:
    """Every record of an offline run's ``.wandb`` log, read with wandb's own reader
    (``wandb leet inspect --json``: one JSON object per record)."""
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                        str(run_dir)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


@pytest.mark.slow  # two trainings; workflow 000 also runs W&B offline with a resume
def test_wandb_offline_logs_metrics_csv_and_resume_continues_the_run(tmp_path, offline_wandb):
    pytest.importorskip("wandb", reason="needs the wandb extra: pip install -e '.[wandb]'")
    run = _train(tmp_path, "log.wandb.mode=offline", "log.wandb.project=trk-test")
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    first = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(first) == 1, list((run / "wandb").iterdir())

    records = _wandb_records(first[0])
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    logged = {int(h["_step"]): h["val/miou"] for h in history if "val/miou" in h}
    assert logged == _val_miou(run)  # the same numbers as metrics.csv, epoch by epoch
    assert all("train/loss" in h and "lr" in h for h in history if "val/miou" in h)
    figures = [h for h in history if h.get("val/figure._type") == "image-file"]
    assert [int(h["_step"]) for h in figures] == [1, 2]  # visualizations/epoch_NNN.png
    summary: dict = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["best_checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert "best/iou/disc" in summary and "best/val_miou" in summary
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["run_id"] == run_id and header["project"] == "trk-test"
    config: dict = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    assert config["train"]["epochs"] == 2 and config["name"] == "trk"  # the resolved config

    _resume(run, "train.epochs=3")  # the same W&B run, from epoch 3
    assert json.loads((run / "trackers.json").read_text())["wandb"]["run_id"] == run_id
    parts = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(parts) == 2  # `wandb sync` uploads both parts into the one run, in order
    later = [r["history"]["item"] for r in _wandb_records(parts[1]) if r["type"] == "history"]
    resumed = {int(h["_step"]): h["val/miou"] for h in later if "val/miou" in h}
    assert resumed == {3: _val_miou(run)[3]}


def test_mlflow_file_store_logs_metrics_csv_and_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install -e '.[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store's switch
    uri = (tmp_path / "mlruns").as_uri()  # file:///TMP/mlruns
    run = _train(tmp_path, f"log.mlflow.tracking_uri={uri}", "log.mlflow.experiment=trk-exp")
    saved = json.loads((run / "trackers.json").read_text())["mlflow"]
    assert saved["tracking_uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("trk-exp")
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_id == saved["run_id"] and found.info.status == "FINISHED"

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(saved["run_id"], key)}

    assert history("val/miou") == _val_miou(run)  # metrics.csv's numbers, epoch by epoch
    assert set(history("train/loss")) == {1, 2} and set(history("lr")) == {1, 2}
    assert "best/iou/disc" in found.data.metrics and "best/val_miou" in found.data.metrics
    assert found.data.tags["best_checkpoint"] == str(run / "checkpoints" / "best.pt")
    assert found.data.params["train.epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(saved["run_id"])}
    assert {"config.yaml", "visualizations"} <= artifacts
    figures = {a.path for a in client.list_artifacts(saved["run_id"], "visualizations")}
    assert figures == {"visualizations/epoch_001.png", "visualizations/epoch_002.png"}

    _resume(run, "train.epochs=3")  # the same MLflow run, from epoch 3
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == saved
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [saved["run_id"]]
    assert history("val/miou") == _val_miou(run) and set(_val_miou(run)) == {1, 2, 3}
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"


def test_mlflow_bad_tracking_uri_is_a_config_error_naming_the_key(tmp_path):
    pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install -e '.[mlflow]'")
    r = runner.invoke(app, ["train", "-q", "-c", QUICK, *TINY, "train.epochs=1",
                            f"output_dir={tmp_path / 'runs'}",
                            "log.mlflow.tracking_uri=nosuchscheme://nowhere/x"])
    said = _refusal(r)
    assert "log.mlflow.tracking_uri" in said and "nosuchscheme://nowhere/x" in said


@pytest.mark.parametrize("name", [n for n, k in trackers.TRACKERS.items() if k.extra])
def test_tracker_without_its_package_is_refused_naming_the_extra(tmp_path, monkeypatch, name):
    """The wiring without the package (runs where the extra is not installed): one line
    naming the key and the extra, before a run dir is made."""
    kind = trackers.TRACKERS[name]
    real = importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda n, *a: None if n == kind.package else real(n, *a))
    section = {"wandb": "log.wandb.mode=offline", "mlflow": "log.mlflow.experiment=x"}[name]
    r = runner.invoke(app, ["train", "-q", "-c", QUICK, *TINY, f"output_dir={tmp_path / 'runs'}",
                            section])
    said = _refusal(r)
    assert kind.key in said and f".[{kind.extra}]" in said, r.output
    assert not (tmp_path / "runs").exists()


class _Recorder:
    """A tracker that keeps every call (and, when asked, fails on the first scalars)."""

    calls: ClassVar[list[tuple]] = []

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def log_scalars(self, step, scalars):
        if self.fail:
            raise ConnectionError("the tracking server went away")
        self.calls.append(("scalars", step, dict(scalars)))

    def log_image(self, step, key, path):
        self.calls.append(("image", step, key, Path(path).name))

    def log_config(self, config, text):
        self.calls.append(("config", config["name"]))

    def finish(self, step, summary, best_checkpoint):
        self.calls.append(("finish", step, dict(summary), best_checkpoint))

    def state(self):
        return {}


def test_every_tracker_gets_the_rows_figures_config_and_best_and_a_failure_is_one_warning(
        tmp_path, monkeypatch):
    """The table's contract with a stand-in tracker (no package needed), beside one that fails
    mid-run: training finishes, one warning line says so, TensorBoard still has its files."""
    _Recorder.calls = []
    table = dict(trackers.TRACKERS)
    table["recorder"] = trackers.TrackerKind("log.recorder", "json", None, lambda lc: True,
                                             lambda cfg, run_dir, saved: _Recorder())
    table["broken"] = trackers.TrackerKind("log.broken", "json", None, lambda lc: True,
                                           lambda cfg, run_dir, saved: _Recorder(fail=True))
    monkeypatch.setattr(trackers, "TRACKERS", table)
    run = _train(tmp_path)
    calls = _Recorder.calls
    assert calls[0] == ("config", "trk")
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    scalars = [c for c in calls if c[0] == "scalars"]
    assert [s[1] for s in scalars] == [1, 2]
    for (_, _, got), row in zip(scalars, rows):
        assert got["val/miou"] == float(row["val_miou"])
        assert got["train/loss"] == float(row["train_loss"]) and got["lr"] == float(row["lr"])
    assert [c for c in calls if c[0] == "image"] == [("image", 1, "val/figure", "epoch_001.png"),
                                                     ("image", 2, "val/figure", "epoch_002.png")]
    (finish,) = [c for c in calls if c[0] == "finish"]
    assert finish[1] == 2 and finish[3] == run / "checkpoints" / "best.pt"
    summary = json.loads((run / "summary.json").read_text())
    assert finish[2]["best/val_miou"] == pytest.approx(summary["best_val_miou"])
    assert {k for k in finish[2] if k.startswith("best/iou/")} <= {
        f"best/iou/{c}" for c in ("background", "disc", "box", "triangle", "ring")}
    warned = [line for line in (run / "train.log").read_text().splitlines()
              if "broken failed" in line]
    assert len(warned) == 1 and "training goes on" in warned[0]
    assert list((run / "tensorboard").iterdir())
    assert not (run / "trackers.json").exists()  # no tracker with a run to continue


def test_tensorboard_keeps_its_scalars(tmp_path):
    """TensorBoard as one entry of the table: the same tags as before (the row's keys with
    the first _ as /), the epochs as steps, no images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _train(tmp_path)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/task", "lr", "val/miou", "epoch/seconds"} <= set(tags["scalars"])
    assert not tags["images"]
    got = {e.step: e.value for e in acc.Scalars("val/miou")}
    assert got == pytest.approx(_val_miou(run))
