"""Failed runs mark their run dir: ``<run>/FAILED`` holds why the run stopped.

One table of ways a ``compress train`` run stops with an error after its run dir exists
(a NaN loss, an absurd learning rate, bad data found while setting up or mid-epoch, a user
error, Ctrl-C). For each row: one ``error:`` line; the run dir holds ``FAILED`` with the
error class and the same message, where it stopped (``at: set-up`` / ``at: epoch k of
n``) and the UTC time. Then ``compress compare`` skips a failed run naming it and the
reason (output and comparison.md), a ``--resume`` that fails its checks writes nothing,
and a ``--resume`` that finishes removes the file (never a ``FAILED`` we did not write).
A SIGKILL cannot write the file (see docs/faults.md).
"""

from __future__ import annotations

import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import compress.io
from compress.rundir import FAILED_NAME, clear_failed, failed_reason
from tests.conftest import REPO
from tests.faults._helpers import error_line, record, run_and_kill, run_inprocess
from tests.faults.test_bad_inputs import folder_dataset

QUICK = str(REPO / "configs" / "quickstart.yaml")


def train_argv(out: Path, name: str, *extra: str) -> list[str]:
    return ["train", "-q", "-c", QUICK, f"output_dir={out}", f"name={name}",
            "data.size=[64,64]", "data.synthetic_length=16", "data.synthetic_val_length=8",
            "data.batch_size=4", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=3",
            "train.threads=1", "train.vis_every=0", "w_task=1", "kd.response.weight=0", *extra]


def the_run_dir(out: Path, name: str) -> Path:
    runs = sorted((out / name).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def train_inprocess(monkeypatch, argv: list[str], fault: str | None = None):
    """``compress train`` through ``main()``; ``fault`` arms the test hook (its counters
    reset, as in a fresh process)."""
    monkeypatch.setattr(compress.io, "_fault_hits", {})
    monkeypatch.setattr(compress.io, "_fault", compress.io.parse_fault(fault))
    return run_inprocess("compress", argv)


@dataclass
class FailedRow:
    id: str
    extra: tuple[str, ...] = ()
    reason: tuple[str, ...] = ()  # each in the error line and in FAILED's error line
    at: str = ""                  # FAILED's "at:" line starts with this
    fault: str | None = None      # SEGCOMPRESS_FAULT for the run
    data: str | None = None       # a broken folder dataset (test_bad_inputs.folder_dataset)
    ctrl_c: bool = False          # console run stopped at ``fault`` by ``sig``
    sig: signal.Signals = signal.SIGINT
    code: int = 130               # its exit code


ROWS = [
    FailedRow("nan-loss", fault="loss@6:nan", at="epoch 2 of 3",
              reason=("TrainingDiverged", "loss became nan at epoch 2, step 5",
                      "last good checkpoint")),
    FailedRow("absurd-lr", ("train.lr=1e6",), at="epoch 1 of 3",
              reason=("TrainingDiverged", "weights became NaN/inf", "no checkpoint yet")),
    FailedRow("image-without-mask", data="no_mask", at="set-up",
              reason=("DataError", "img0.png", "mask missing")),
    FailedRow("truncated-val-image", data="truncated", at="epoch 1 of 3",
              reason=("DataError", "img0.png", "unreadable image")),
    FailedRow("ignore-index-is-a-class", ("ignore_index=0",), at="set-up",
              reason=("ValueError", "ignore_index 0 is the class")),
    FailedRow("ctrl-c", fault="train_step@6", ctrl_c=True, at="epoch 2 of 3",
              reason=("KeyboardInterrupt", "interrupted")),
    # issue 20: SIGTERM (a scheduler's kill) is handled as Ctrl-C is
    FailedRow("sigterm", fault="train_step@6", ctrl_c=True, sig=signal.SIGTERM, code=143,
              at="epoch 2 of 3", reason=("Terminated", "terminated (SIGTERM)")),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_failed_run_writes_failed_with_its_reason(row: FailedRow, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    extra = list(row.extra)
    if row.data:
        root = folder_dataset(tmp_path / "data", row.data)
        extra += ["data.kind=folder", f"data.root={root}", "data.batch_size=2"]
    argv = train_argv(out, "failed", *extra)
    if row.ctrl_c:
        r = run_and_kill([sys.executable, "-m", "compress.cli", *argv], row.fault,
                         tmp_path / "stopped", timeout=300, sig=row.sig)
        assert r.code == row.code, r.stderr[-2000:]
    else:
        r = train_inprocess(monkeypatch, argv, row.fault)
    line = error_line(r)
    run = the_run_dir(out, "failed")
    text = (run / FAILED_NAME).read_text()
    reason = failed_reason(run)
    assert reason is not None and reason.split(": ", 1)[1] in line, (line, text)
    missing = [w for w in row.reason if w.lower() not in reason.lower()]
    assert not missing, f"FAILED does not name {missing}:\n{text}"
    assert re.search(rf"^at: {row.at}", text, re.MULTILINE), text
    assert re.search(r"^time: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", text, re.MULTILINE), text
    assert not (run / "summary.json").exists() and not list(run.rglob("*.tmp"))
    record("failed_marked", row.id)


def test_compare_skips_a_failed_run_and_a_finished_resume_clears_it(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    ok = train_inprocess(monkeypatch, train_argv(out, "good", "train.epochs=2"))
    assert ok.code == 0, ok.text[-2000:]
    good = the_run_dir(out, "good")
    r = train_inprocess(monkeypatch, train_argv(out, "nan"), fault="loss@6:nan")
    assert "loss became nan" in error_line(r)
    failed = the_run_dir(out, "nan")
    assert (failed / FAILED_NAME).is_file()

    # a resume that fails its checks writes nothing: the finished run is not marked
    r = train_inprocess(monkeypatch, ["train", "-q", "--resume", str(good), "train.epochs=1"])
    assert "more than train.epochs=1" in error_line(r)
    assert not (good / FAILED_NAME).exists()

    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\noutput_dir: {tmp_path / 'studies'}\nbaseline: base\n"
                     "latency: {warmup: 1, repeats: 2}\n"
                     f"recipes:\n  - {{name: base, runs: ['{out}/*/*']}}\n")
    compare = ["compare", "-c", str(study), "--collect-only", "-q"]
    r = run_inprocess("compress", compare)
    assert r.code == 0, r.text[-2000:]
    skipped = (f"skipped: {failed}: TrainingDiverged: loss became nan at epoch 2, step 5 "
               "(each named term is finite; try a lower train.lr (now 0.003) or a smaller "
               f"train.clip_grad (now 1)); last good checkpoint: {failed / 'checkpoints' / 'last.pt'}")
    md = (tmp_path / "studies" / "s" / "comparison.md").read_text()
    assert skipped in r.stdout and skipped in md, r.stdout
    assert "| base | 1 |" in r.stdout

    # the cause is gone (no hook): the resume finishes and removes FAILED
    r = train_inprocess(monkeypatch, ["train", "-q", "--resume", str(failed)])
    assert r.code == 0, r.text[-2000:]
    assert not (failed / FAILED_NAME).exists() and (failed / "summary.json").is_file()
    r = run_inprocess("compress", compare)
    assert r.code == 0 and "skipped:" not in r.stdout and "| base | 2 |" in r.stdout, r.stdout
    record("failed_marked", "compare skip + resume clear")


def test_a_failed_file_we_did_not_write_is_left_alone(tmp_path):
    (tmp_path / FAILED_NAME).write_text("my notes: this run looked odd\n")
    clear_failed(tmp_path)
    assert (tmp_path / FAILED_NAME).read_text() == "my notes: this run looked odd\n"
    assert failed_reason(tmp_path) == f"{FAILED_NAME} present (no reason given)"
