"""Experiment trackers: TensorBoard (always), W&B (``log.wandb``) and MLflow (``log.mlflow``).

Every tracker is one entry of :data:`TRACKERS` and gets the same calls from the loop (rank
0 only), through :class:`Trackers`: after each epoch the ``metrics.csv`` row's numbers
(the keys with the first ``_`` as ``/``: ``train/loss``, ``lr``, ``val/miou``) and the
epoch's figures (``visualizations/epoch_NNN*.png``); at the end best.pt's val mIoU and
per-class IoU (``best/iou/<class>``), ``test/miou`` when scored, ``visualizations/test.png``
and best.pt's path. TensorBoard keeps what it always wrote: the epoch scalars under
``<run>/tensorboard``, nothing else.

A tracker that cannot start is a :class:`~compress.config.ConfigError` naming its key
(``log.mlflow.tracking_uri``; a missing package names the extra to install); one that fails
later says so once and training goes on without it. A resume continues the same tracker
runs: their ids are kept in ``<run>/trackers.json``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compress.config import ConfigError, LogConfig, RunConfig, dump_config, flat_keys
from compress.errors import one_line
from compress.io import atomic_write_json
from compress.models import read_checkpoint

log = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"  # in the run dir: {tracker name: what resumes its run}


class Tracker(Protocol):
    """What the loop calls; ``step`` is the epoch (1-based), as in TensorBoard."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_image(self, step: int, key: str, path: Path) -> None: ...

    def log_config(self, config: dict[str, Any], text: str) -> None: ...

    def finish(self, step: int, summary: dict[str, float], best_checkpoint: Path | None) -> None:
        ...

    def state(self) -> dict[str, Any]:
        """What ``trackers.json`` keeps to continue this run on a resume ({} for none)."""
        ...


@dataclass(frozen=True)
class TrackerKind:
    """One tracker: the config key that enables it, the package it needs (and the extra that
    installs it), and how it starts: ``start(cfg, run_dir, saved)`` with ``saved`` its
    ``trackers.json`` entry (a resume), returning None when it cannot log at all."""

    key: str
    package: str
    extra: str | None
    enabled: Callable[[LogConfig], bool]
    start: Callable[[RunConfig, Path, dict | None], Tracker | None]


# ---------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """``<run>/tensorboard`` event files: the epoch scalars only (figures are PNGs)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_image(self, step: int, key: str, path: Path) -> None:
        pass

    def log_config(self, config: dict[str, Any], text: str) -> None:
        pass

    def finish(self, step: int, summary: dict[str, float], best_checkpoint: Path | None) -> None:
        self.writer.close()

    def state(self) -> dict[str, Any]:
        return {}


def _start_tensorboard(cfg: RunConfig, run_dir: Path, saved: dict | None) -> Tracker | None:
    try:
        return TensorBoardTracker(run_dir)
    except ImportError:  # tensorboard is a dependency; a broken install should not stop training
        log.warning("tensorboard not importable: no event files written")
        return None


# ---------------------------------------------------------------- Weights & Biases


class WandbTracker:
    """A W&B run under ``<run>/wandb`` (offline unless ``log.wandb.mode: online``)."""

    def __init__(self, run) -> None:
        self.run = run

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_image(self, step: int, key: str, path: Path) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))}, step=step)

    def log_config(self, config: dict[str, Any], text: str) -> None:
        self.run.config.update(config, allow_val_change=True)  # a resume may change epochs

    def finish(self, step: int, summary: dict[str, float], best_checkpoint: Path | None) -> None:
        self.run.summary.update({**summary, "best_checkpoint": str(best_checkpoint)
                                 if best_checkpoint else None})
        self.run.finish()

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run.id, "project": self.run.project}


def _start_wandb(cfg: RunConfig, run_dir: Path, saved: dict | None) -> Tracker:
    import wandb

    wc = cfg.log.wandb
    mode = "online" if wc.mode == "online" else "offline"  # nothing leaves unless asked
    # the environment too: wandb-core, and anything it starts, reads these
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(run_dir)
    if mode == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    run_id = (saved or {}).get("run_id")
    try:
        run = wandb.init(
            project=wc.project, name=wc.name or f"{cfg.name}/{run_dir.name}", dir=str(run_dir),
            id=run_id, resume="allow" if run_id else None, mode=mode,
            settings=wandb.Settings(silent=True, console="off", save_code=False,
                                    disable_git=True, reinit="create_new",
                                    x_disable_stats=True))
    except Exception as e:  # noqa: BLE001 - no login for online, a bad project name...
        raise ConfigError(f"log.wandb: cannot start a W&B run ({one_line(e)})") from None
    return WandbTracker(run)


# ---------------------------------------------------------------- MLflow

_MLFLOW_NAME = re.compile(r"[^\w\-. /]")  # what MLflow allows in metric names


class MlflowTracker:
    """An MLflow run: metrics, ``config.yaml`` and figures as artifacts, params from the
    resolved config (the first start only: MLflow refuses changing a param)."""

    def __init__(self, client, run_id: str, uri: str, resumed: bool) -> None:
        self.client, self.run_id, self.uri, self.resumed = client, run_id, uri, resumed

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[
            Metric(_MLFLOW_NAME.sub("_", k), float(v), now, step) for k, v in scalars.items()])

    def log_image(self, step: int, key: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "visualizations")

    def log_config(self, config: dict[str, Any], text: str) -> None:
        from mlflow.entities import Param

        self.client.log_text(self.run_id, text, "config.yaml")
        if self.resumed:  # its params were logged when it started
            return
        params = [Param(k, str(v)[:6000]) for k, v in flat_keys(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes 100 params at a time
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def finish(self, step: int, summary: dict[str, float], best_checkpoint: Path | None) -> None:
        if summary:
            self.log_scalars(step, summary)
        if best_checkpoint is not None:
            self.client.set_tag(self.run_id, "best_checkpoint", str(best_checkpoint))
        self.client.set_terminated(self.run_id, "FINISHED")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}


def mlflow_uri(cfg: RunConfig) -> str:
    """``log.mlflow.tracking_uri``, or the default: a local file store ``<output_dir>/mlruns``."""
    uri = cfg.log.mlflow.tracking_uri
    return uri or (Path(cfg.output_dir).resolve() / "mlruns").as_uri()


def _start_mlflow(cfg: RunConfig, run_dir: Path, saved: dict | None) -> Tracker:
    mc = cfg.log.mlflow
    uri = mlflow_uri(cfg)
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store behind this switch ("maintenance mode"); a local
        # file store is what we default to, so a run may write one without a database
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    key = "log.mlflow.tracking_uri"
    try:
        client = MlflowClient(tracking_uri=uri)
        old = (saved or {}).get("run_id") if (saved or {}).get("tracking_uri") == uri else None
        if old is not None:
            client.update_run(old, status="RUNNING")
            return MlflowTracker(client, old, uri, resumed=True)
        name = mc.experiment or cfg.name
        key = "log.mlflow.experiment" if mc.experiment else key
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        run = client.create_run(exp_id, run_name=f"{cfg.name}/{run_dir.name}",
                                tags={"run_dir": str(run_dir)})
    except Exception as e:  # noqa: BLE001 - unknown scheme, unwritable path, no server
        raise ConfigError(f"{key} {uri if key.endswith('uri') else name!r}: cannot start an "
                          f"MLflow run there ({one_line(e)})") from None
    return MlflowTracker(client, run.info.run_id, uri, resumed=False)


# ---------------------------------------------------------------- the table

TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind("tensorboard", "torch.utils.tensorboard", None,
                               lambda lc: True, _start_tensorboard),
    "wandb": TrackerKind("log.wandb", "wandb", "wandb", lambda lc: lc.wandb is not None,
                         _start_wandb),
    "mlflow": TrackerKind("log.mlflow", "mlflow", "mlflow", lambda lc: lc.mlflow is not None,
                          _start_mlflow),
}


def check_trackers(cfg: RunConfig) -> None:
    """Refuse, before anything is trained, a tracker whose package is not installed.

    Raises:
        ConfigError: one line naming the key and the extra that installs it.
    """
    for kind in TRACKERS.values():
        if kind.extra and kind.enabled(cfg.log) and importlib.util.find_spec(kind.package) is None:
            raise ConfigError(f"{kind.key} is set but {kind.package} is not installed: "
                              f"pip install -e '.[{kind.extra}]' (or drop {kind.key})")


class Trackers:
    """The trackers of one run (rank 0): each call goes to all of them; a tracker that
    fails says so once, in one warning line, and is dropped (training goes on)."""

    def __init__(self, run_dir: Path, started: dict[str, Tracker]) -> None:
        self.run_dir, self.started = run_dir, dict(started)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.started.items()):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - whatever it raises: training goes on
                log.warning(f"{name} failed ({one_line(e)}): not logging to it any more; "
                            "training goes on")
                del self.started[name]

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """An epoch's ``metrics.csv`` row (its numbers, ``train_loss`` as ``train/loss``)
        and the figures the epoch wrote (``visualizations/epoch_NNN*.png``)."""
        scalars = {k.replace("_", "/", 1): v for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float))}
        self._each(lambda t: t.log_scalars(epoch, scalars))
        for png in sorted((self.run_dir / "visualizations").glob(f"epoch_{epoch:03d}*.png")):
            key = "val/figure" + png.stem.removeprefix(f"epoch_{epoch:03d}")
            self._each(lambda t, k=key, p=png: t.log_image(epoch, k, p))

    def finish(self, epoch: int, test: dict | None = None) -> None:
        """The end: best.pt's val mIoU and per-class IoU, the test split's mIoU and figure,
        best.pt's path; then every tracker closes its run."""
        best = self.run_dir / "checkpoints" / "best.pt"
        summary = best_scores(best) if best.is_file() else {}
        if test:
            summary["test/miou"] = test["miou"]
        fig = self.run_dir / "visualizations" / "test.png"
        if test and fig.is_file():
            self._each(lambda t: t.log_image(epoch, "test/figure", fig))
        self._each(lambda t: t.finish(epoch, summary, best if best.is_file() else None))


def best_scores(best: Path) -> dict[str, float]:
    """``best/val_miou`` and ``best/iou/<class>`` (classes with no pixels left out) of a
    checkpoint's recorded val metrics."""
    metrics = read_checkpoint(best).get("metrics") or {}
    out = {"best/val_miou": float(metrics["miou"])} if "miou" in metrics else {}
    out.update({f"best/iou/{c}": float(v) for c, v in
                (metrics.get("per_class_iou") or {}).items() if v is not None})
    return out


def start_trackers(cfg: RunConfig, run_dir: Path) -> Trackers:
    """Start every enabled tracker (continuing the runs ``trackers.json`` names), record
    their run ids and log the resolved config.

    Raises:
        ConfigError: a tracker that cannot start, naming its key.
    """
    check_trackers(cfg)
    path = run_dir / TRACKERS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    started: dict[str, Tracker] = {}
    for name, kind in TRACKERS.items():
        if kind.enabled(cfg.log):
            tracker = kind.start(cfg, run_dir, saved.get(name))
            if tracker is not None:
                started[name] = tracker
    state = {**saved, **{n: s for n, t in started.items() if (s := t.state())}}
    if state != saved:
        atomic_write_json(path, state)
    trackers = Trackers(run_dir, started)
    config, text = cfg.model_dump(mode="json"), dump_config(cfg)
    trackers._each(lambda t: t.log_config(config, text))
    return trackers


