"""What a run dir holds, written and read in one place: the new run dir
(:func:`make_run_dir`) and its log, ``metrics.csv``, ``summary.json`` and TensorBoard
events; the checks of a ``--resume`` (:func:`find_resume`, :func:`check_resume`,
:func:`check_run_recipe`; :func:`open_resume` runs them, :func:`commit_resume` makes the
run dir ours again); the ``FAILED`` file of a run that stopped with an error
(:func:`mark_failed`, :func:`failed_reason`, :func:`clear_failed`); and ``best.pt``
scored on the test split (:func:`score_test_split`) and its per-image val counts
(:func:`val_image_counts`).

The layout is in docs/CONTRACTS.md ("Run dir"); :mod:`compress.train` is the loop that
fills it.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from compress.config import (
    ConfigError,
    RunConfig,
    dump_config,
    flat_keys,
    load_config,
    log_keys,
    parse_overrides,
    remote_destinations,
)
from compress.data import DataError, build_split, collate
from compress.devices import resolve_device
from compress.distill import recipe_factories, recipe_references
from compress.errors import error_name, one_line
from compress.evaluate import evaluate
from compress.evidence import ImageCounter, ImageCounts
from compress.io import atomic_write_json, atomic_write_text, remove_stale_temps
from compress.models import load_model, read_checkpoint, require_trusted
from compress.spec import ModelSpec
from compress.viz import save_epoch_visual

log = logging.getLogger("compress")

# ---------------------------------------------------------------- a new run dir


def make_run_dir(cfg: RunConfig) -> Path:
    """A new run dir's path, ``output_dir/name/<timestamp>`` (``-1``, ``-2``... when taken);
    nothing is created."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / cfg.name / stamp
    k = 1
    while run_dir.exists():
        run_dir = Path(cfg.output_dir) / cfg.name / f"{stamp}-{k}"
        k += 1
    return run_dir


class _HeldLog(logging.Handler):
    """Keeps records until a resume passed its checks (then they go to train.log)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _file_handler(run_dir: Path) -> logging.Handler:
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return fh


def setup_logging(run_dir: Path, rank: int, buffered: bool = False) -> None:
    """train.log plus the console; ``buffered`` holds the file's records in memory until
    :func:`commit_log` (a resume writes nothing before its checks pass)."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if rank == 0:
        log.addHandler(_HeldLog() if buffered else _file_handler(run_dir))
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    log.propagate = False


def commit_log(run_dir: Path, rank: int) -> None:
    """Write the held records to train.log and log there from now on."""
    for h in list(log.handlers):
        if isinstance(h, _HeldLog):
            fh = _file_handler(run_dir)
            for r in h.records:
                fh.handle(r)
            log.removeHandler(h)
            log.addHandler(fh)


# ---------------------------------------------------------------- what the loop writes


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """``metrics.csv``: one row per epoch, the columns of every row (atomically)."""
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())


def write_summary(run_dir: Path, history: list[dict], spec: ModelSpec, best: float,
                  test: dict | None = None) -> None:
    """``summary.json``: best val mIoU, epochs, training time, the spec, the last row, the
    test split's mIoU, and a multi-task run's last depth metrics."""
    total = sum(r.get("epoch_seconds", 0) for r in history)
    summary = {
        "best_val_miou": best, "epochs": len(history), "train_seconds": round(total, 1),
        "spec": spec.to_dict(), "final": history[-1] if history else None,
        "test_miou": test["miou"] if test else None,
    }
    if spec.tasks:  # a multi-task run: the last validated epoch's depth metrics
        rows = [r for r in history if "val_depth_rmse" in r]
        summary["final_val_depth"] = ({k.removeprefix("val_depth_"): v for k, v in
                                       rows[-1].items() if k.startswith("val_depth_")}
                                      if rows else None)
    atomic_write_json(run_dir / "summary.json", summary)


# ---------------------------------------------------------------- --resume


def find_resume(resume: str | Path) -> tuple[Path, Path | None]:
    """(run dir, its last.pt) for ``--resume``; last.pt is None when the run was stopped
    before its first epoch ended (then it starts over, in the same run dir).

    Only a run dir (it holds ``config.yaml``) or the ``last.pt`` inside its
    ``checkpoints/`` is accepted: any other file would make a stranger folder the run dir.

    Raises:
        FileNotFoundError: ``resume`` does not exist or is not a run dir.
        ValueError: a file other than ``<run>/checkpoints/last.pt``.
    """
    p = Path(resume)
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise FileNotFoundError(f"nothing to resume: {p} is not a run dir (no config.yaml)")
        last = p / "checkpoints" / "last.pt"
        return p, (last if last.is_file() else None)
    if not p.is_file():
        raise FileNotFoundError(f"nothing to resume: {p} not found (give a run dir or its "
                                "checkpoints/last.pt)")
    run = p.parent.parent
    if p.name != "last.pt" or p.parent.name != "checkpoints" or not (run / "config.yaml").is_file():
        raise ConfigError(f"--resume {p}: not a run's checkpoints/last.pt (give the run dir, "
                         "the folder holding config.yaml and checkpoints/)")
    return run, p


def check_run_recipe(run_dir: Path, cfg: RunConfig, overrides: list[str] | None = None) -> None:
    """A resume whose recipe is the run dir's own ``config.yaml``: a run dir handed over is
    data, so a factory, external encoder or kwarg its recipe names
    (:func:`compress.distill.recipe_references`) is refused unless trusted by name (or
    given now in ``overrides``); nothing is imported before this passes. Likewise a tracker
    setting that sends metrics off the machine (:func:`compress.config.remote_destinations`)
    must be given now.

    Raises:
        ModelError: one line naming config.yaml, the key and the name.
        ConfigError: W&B online or a remote MLflow URI that only the run dir asks for.
    """
    given = [k for k, _ in parse_overrides(overrides or [])]  # the keys set now, by the user

    def set_now(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in given)

    for key, name in recipe_references(cfg):
        if not set_now(key):
            require_trusted(key, name, source=Path(run_dir) / "config.yaml")
    for key, value in remote_destinations(cfg.log):  # nothing leaves unless the user says so
        if not set_now(key):
            raise ConfigError(f"{Path(run_dir) / 'config.yaml'}: {key} {value!r} would send "
                              f"this run's metrics off the machine; a run dir's recipe is "
                              f"data: resume with {key}={value} to agree, or "
                              f"{'log.wandb.mode=offline' if 'wandb' in key else 'log.mlflow=null'}")


# a change to these keys does not change what is trained: allowed on resume, logged
RESUME_FREE_KEYS = ("name", "output_dir", "train.epochs", "train.device", "train.threads",
                    "train.val_every", "train.vis_every", "train.save_every",
                    "train.save_untrained", "train.test_split", "data.num_workers",
                    *log_keys())


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs: ``{key: (old, new)}``."""
    a, b = flat_keys(old.model_dump(mode="json")), flat_keys(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
    """``key: old -> new`` for the first five changes (and how many more)."""
    shown = ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(changes.items())[:5])
    return shown + (f" (+{len(changes) - 5} more)" if len(changes) > 5 else "")


def check_resume(run_dir: Path, cfg: RunConfig, done_epochs: int,
                 allow_changed: bool, saved: dict | None = None) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe of a resume with the run's own ``config.yaml``, and that file
    with the config saved in ``last.pt`` (``saved``: what was really trained; an edited
    config.yaml would otherwise resume silently); nothing is written.

    Returns the changes (to be logged). Raises ConfigError for a changed model / loss /
    data / optimiser recipe unless ``allow_changed`` (``--resume-changed``), and for
    ``train.epochs`` below the epochs already done.
    """
    try:
        stored = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml is not a valid recipe "
                         f"({e})") from None
    edited = {}
    if isinstance(saved, dict):  # keys both know: a file from an older version lacks some
        a, b = flat_keys(saved), flat_keys(stored.model_dump(mode="json"))
        edited = {k: (a[k], b[k]) for k in sorted(set(a) & set(b))
                  if a[k] != b[k] and k not in RESUME_FREE_KEYS}
    if edited and not allow_changed:
        raise ConfigError(f"cannot resume {run_dir}: its config.yaml differs from the config "
                         f"saved in checkpoints/last.pt ({_shown(edited)}): edited after the "
                         "run started? pass --resume-changed to continue with the change (it "
                         "is logged)")
    changes = config_changes(stored, cfg)
    recipe = {k: v for k, v in changes.items() if k not in RESUME_FREE_KEYS}
    if recipe and not allow_changed:
        raise ConfigError(f"cannot resume {run_dir}: the recipe differs from its config.yaml "
                         f"({_shown(recipe)}); resume without -c to use the run's own recipe, or "
                         "pass --resume-changed to continue with the change (it is logged)")
    if cfg.train.epochs < done_epochs:
        raise ConfigError(f"cannot resume {run_dir}: it has run {done_epochs} epochs already, "
                         f"more than train.epochs={cfg.train.epochs}")
    return {**edited, **changes}


def open_resume(resume: str | Path, cfg: RunConfig, allow_changed: bool
                ) -> tuple[Path, dict | None, dict[str, tuple[Any, Any]]]:
    """Every check of a ``--resume`` (nothing is written): the run dir, the content of its
    ``last.pt`` (None when the run stopped in its first epoch) and the recipe changes
    :func:`check_resume` allowed."""
    run_dir, last_path = find_resume(resume)
    last_state = None
    if last_path is not None:
        last_state = read_checkpoint(last_path)
        if "optimizer" not in last_state or "history" not in last_state:
            raise ConfigError(f"nothing to resume: {last_path} holds weights only (no "
                             "optimizer state); give a run's checkpoints/last.pt")
    changes = check_resume(run_dir, cfg, last_state["epoch"] if last_state else 0,
                           allow_changed, (last_state or {}).get("config"))
    return run_dir, last_state, changes


def commit_resume(run_dir: Path, cfg: RunConfig, changes: dict[str, tuple[Any, Any]],
                  epoch: int, history: list[dict] | None) -> None:
    """A resume passed every check: the run dir is ours again. Clear temp files of
    interrupted writes, record the resume in ``config.yaml``, catch ``metrics.csv`` up to
    ``history`` (None: no ``last.pt`` yet)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_stale_temps(folder)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    note = None
    if changes:
        note = (f"resumed {datetime.now():%Y-%m-%d %H:%M:%S} at epoch {epoch}: "
                + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changes.items()))
    atomic_write_text(run_dir / "config.yaml", _resumed_config_text(run_dir, cfg, note))
    if history is not None:  # a kill between last.pt and metrics.csv left it behind
        write_metrics_csv(run_dir / "metrics.csv", history)


def _resumed_config_text(run_dir: Path, cfg: RunConfig, note: str | None) -> str:
    """The resolved config, under the comment lines that record earlier resumes."""
    path = run_dir / "config.yaml"
    head = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            head.append(line)
    if note:
        head.append(f"# {note}")
    return "".join(f"{h}\n" for h in head) + dump_config(cfg)


# ---------------------------------------------------------------- FAILED


FAILED_NAME = "FAILED"
_FAILED_HEAD = "# segcompress: this run stopped with an error"


@dataclass
class RunProgress:
    """Where a run is, for its FAILED file: ``run_dir`` is set (on rank 0) once the run
    dir is ours to write (a new run dir, or a resume whose checks passed)."""

    run_dir: Path | None = None
    epoch: int | None = None
    epochs: int | None = None


def mark_failed(run_dir: Path, error: BaseException, progress: RunProgress) -> None:
    """Write ``<run>/FAILED``: the error class and message, the epoch, the UTC time.

    ``compress compare`` skips a run holding it (saying why); the run's next successful
    finish (``--resume``) removes it. A SIGKILL cannot write it. A failing write (disk
    full) is logged, never raised over the error that stopped the run.
    """
    at = (f"epoch {progress.epoch} of {progress.epochs}" if progress.epoch
          else "set-up, before the first epoch")
    text = (f"{_FAILED_HEAD}; `--resume {run_dir}` continues it and removes this file\n"
            f"error: {error_name(error)}: {one_line(error)}\n"
            f"at: {at}\n"
            f"time: {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}\n")
    try:
        atomic_write_text(run_dir / FAILED_NAME, text)
    except OSError as e:
        log.warning(f"could not mark {run_dir} as failed: {e}")


def failed_reason(run_dir: Path) -> str | None:
    """Why a run stopped, from its ``FAILED`` file (the ``error:`` line); None without one."""
    path = Path(run_dir) / FAILED_NAME
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        with open(path, "rb") as f:  # bounded: a FAILED file is a few lines
            text = f.read(4096).decode("utf-8", "replace")
    except OSError as e:
        return f"{FAILED_NAME} present but unreadable ({e.strerror})"
    for line in text.splitlines():
        if line.startswith("error: "):
            return line.removeprefix("error: ")[:500]
    return f"{FAILED_NAME} present (no reason given)"


def clear_failed(run_dir: Path) -> None:
    """Remove the ``FAILED`` file a previous attempt wrote, now that the run finished;
    a file of that name we did not write is left alone."""
    path = run_dir / FAILED_NAME
    if path.is_symlink() or not path.is_file():
        return
    with open(path, "rb") as f:
        ours = f.read(len(_FAILED_HEAD)).decode("utf-8", "replace") == _FAILED_HEAD
    if ours:
        path.unlink()
        log.info(f"{path} removed: the run has finished")


# ---------------------------------------------------------------- best.pt scored


def score_test_split(cfg: RunConfig, run_dir: Path, student, teacher, spec: ModelSpec,
                     class_names: list[str], device) -> dict | None:
    """Score best.pt on the data's test split (when it has one): ``test/eval.json`` and
    ``visualizations/test.png``. Synthetic data has no held-out test split."""
    split = cfg.train.test_split
    best = run_dir / "checkpoints" / "best.pt"
    if not split or cfg.data.kind == "synthetic" or not best.is_file():
        return None
    try:
        test_set = build_split(cfg.data, split, spec.mean, spec.std, cfg.ignore_index,
                               False, cfg.seed)
    except DataError:
        return None  # no such split: nothing to report
    student.load_state_dict(read_checkpoint(best)["state_dict"])
    loader = torch.utils.data.DataLoader(test_set, batch_size=cfg.data.batch_size,
                                         num_workers=cfg.data.num_workers, collate_fn=collate)
    counter = ImageCounter(str(run_dir))
    metrics, _ = evaluate(student, loader, class_names, cfg.ignore_index, device,
                          per_image=counter)
    metrics.update(checkpoint=str(best), split=split, images=len(test_set))
    atomic_write_json(run_dir / "test" / "eval.json", metrics)
    counter.counts(split=split).save(run_dir / "test" / "per_image.npz")
    save_epoch_visual(run_dir / "visualizations" / "test.png", student, teacher, test_set, spec,
                      device)
    log.info(f"test split {split!r} ({len(test_set)} images): mIoU {metrics['miou'] * 100:.2f} "
             f"with best.pt")
    return metrics





VAL_PER_IMAGE = Path("val") / "per_image.npz"  # best.pt's per-image counts on the val split


def val_image_counts(run_dir: str | Path, *, write: bool = True, device: str = "cpu",
                     show: bool = False, say: Callable[[str], None] = log.info) -> ImageCounts:
    """Per-image counts of a run's ``best.pt`` on its val split, for paired comparisons.

    ``val/per_image.npz`` when it holds ``best.pt``'s epoch; otherwise (a run from before
    these files, or one whose file belongs to another epoch) ``best.pt`` is scored on the
    val split of the run's ``config.yaml`` now, said through ``say``, and the file written
    when ``write`` (leave a run dir that is not yours untouched with ``write=False``).
    """
    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    ckpt = read_checkpoint(best)
    path = run_dir / VAL_PER_IMAGE
    if path.is_file():
        stored = ImageCounts.load(path, source=str(run_dir))
        if stored.meta.get("epoch") == ckpt.get("epoch"):
            return stored
        why = (f"its {VAL_PER_IMAGE} is of epoch {stored.meta.get('epoch')}, best.pt of "
               f"epoch {ckpt.get('epoch')}")
    else:
        why = f"no {VAL_PER_IMAGE} (a run from before per-image scores were kept)"
    cfg = load_config(run_dir / "config.yaml")
    spec = ckpt["spec"]
    say(f"{run_dir}: {why}: scoring checkpoints/best.pt on its val split "
        f"{cfg.data.val_split!r} now" + ("" if write else " (not written: not this study's run)"))
    val_set = build_split(cfg.data, cfg.data.val_split, spec.mean, spec.std, cfg.ignore_index,
                          False, cfg.seed)
    loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.data.batch_size,
                                         collate_fn=collate)
    counter = ImageCounter(str(run_dir))
    dev = resolve_device(device)
    evaluate(load_model(best, device=dev, trusted=recipe_factories(cfg)), loader,
             list(spec.class_names), cfg.ignore_index, dev, show=show, per_image=counter)
    counts = counter.counts(epoch=ckpt.get("epoch"), split=cfg.data.val_split)
    if write:
        counts.save(path)
    return counts
