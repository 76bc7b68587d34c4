"""Crash and resume: ``compress distill`` killed with SIGKILL, then ``--resume``.

Each case starts the real console entry (``python -m compress.cli distill -c
configs/quickstart.yaml <tiny overrides> teacher.checkpoint=<tiny trained teacher>``) in a
subprocess with ``SEGCOMPRESS_FAULT=<point>@<n>``: the ``n``-th time the run reaches
``point`` it writes a marker file and stops there; the test then sends SIGKILL. Points:

* ``train_step``: after an optimizer step (mid-epoch; before the first last.pt when n is
  within the first epoch),
* ``eval_batch``: inside validation (the teacher's, before epoch 1, or the student's),
* ``write:<file>``: inside an atomic write, the temp file complete but not yet renamed
  (``last.pt``, ``best.pt``, ``metrics.csv``, ``summary.json``).

``n`` is drawn at random (seed ``FAULTS_SEED``, default 0, printed in the summary) from
the range where the point means what the case says. After the kill every ``last.pt`` /
``best.pt`` present must load in full; then ``--resume <run dir>`` must finish with the
same student weights (last.pt and best.pt), ``metrics.csv`` (timing columns aside) and
best mIoU as an uninterrupted run of the same seed: bit-identical on the CPU.

A run killed before its first ``last.pt`` is resumed by starting over in the same run dir
(see docs/faults.md).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress.io import UnsafeFileError, load_torch_file
from compress.models import load_model, read_checkpoint
from tests.conftest import REPO
from tests.faults._helpers import child_env, record, run_and_kill

SEED = int(os.environ.get("FAULTS_SEED", "0"))
EPOCHS = 3
STEPS_PER_EPOCH = 4        # 16 synthetic images, batch 4
VAL_BATCHES = 2            # 8 synthetic val images, batch 4
TIMING = {"epoch_seconds", "step_ms_median"}
QUICK = REPO / "configs" / "quickstart.yaml"


def distill_argv(out: Path, teacher: Path) -> list[str]:
    return [sys.executable, "-m", "compress.cli", "distill", "-q", "-c", str(QUICK),
            f"output_dir={out}", "name=crash", "data.size=[64,64]", "data.synthetic_length=16",
            "data.synthetic_val_length=8", "data.batch_size=4",
            "model.decoder_channels=[16,16,8,8,8]", f"train.epochs={EPOCHS}", "train.threads=1",
            "train.vis_every=0", "train.warmup_epochs=0.5", "teacher.train_epochs=0",
            f"teacher.checkpoint={teacher}", "teacher.allow_weak=true"]


def run_dir_of(out: Path) -> Path:
    runs = sorted((out / "crash").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def run_to_end(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=child_env(),
                       timeout=timeout, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def snapshot(run_dir: Path) -> dict:
    ck = run_dir / "checkpoints"
    return {
        "last": torch.load(ck / "last.pt", weights_only=True)["state_dict"],
        "best": torch.load(ck / "best.pt", weights_only=True)["state_dict"],
        "metrics": [{k: v for k, v in r.items() if k not in TIMING}
                    for r in csv.DictReader((run_dir / "metrics.csv").open())],
        "summary": json.loads((run_dir / "summary.json").read_text()),
    }


def assert_checkpoints_valid(run_dir: Path) -> dict[str, int]:
    """Every last.pt / best.pt present after a kill loads in full (no truncated file under
    a real name); temp files of an interrupted write are hidden ``.*.tmp`` files."""
    epochs = {}
    for name in ("last.pt", "best.pt"):
        p = run_dir / "checkpoints" / name
        if p.exists():
            ckpt = read_checkpoint(p)
            model = load_model(p)
            assert set(model.state_dict()) == set(ckpt["state_dict"])
            epochs[name] = ckpt["epoch"]
    for p in (run_dir / "checkpoints").glob("*"):
        assert p.name in ("last.pt", "best.pt") or (p.name.startswith(".")
                                                     and p.name.endswith(".tmp")), p
    return epochs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trained_teacher) -> dict:
    """The uninterrupted run, same command, same seed."""
    out = tmp_path_factory.mktemp("reference")
    run_to_end(distill_argv(out, trained_teacher))
    return snapshot(run_dir_of(out))


# (case id, fault point, range of n) -- n is drawn from the range with FAULTS_SEED
CASES = [
    ("mid-epoch-2", "train_step", (STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH - 1)),
    ("before-first-last-pt", "train_step", (1, STEPS_PER_EPOCH - 1)),
    ("mid-epoch-3", "train_step", (2 * STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH - 1)),
    ("teacher-validation", "eval_batch", (1, VAL_BATCHES)),
    ("student-validation", "eval_batch", (VAL_BATCHES + 1, VAL_BATCHES * (EPOCHS + 1))),
    ("last-pt-write", "write:last.pt", (1, EPOCHS)),
    ("best-pt-write", "write:best.pt", (1, 1)),
    ("metrics-csv-write-final", "write:metrics.csv", (EPOCHS, EPOCHS)),
    ("summary-json-write", "write:summary.json", (1, 1)),
]
DEFAULT = {"mid-epoch-2", "before-first-last-pt"}


def _draw(case: str, lo: int, hi: int) -> int:
    return random.Random(f"{SEED}:{case}").randint(lo, hi)


def _resume_and_compare(argv, run_dir: Path, reference: dict) -> None:
    run_to_end([*argv, "--resume", str(run_dir)])
    got = snapshot(run_dir)
    for which in ("last", "best"):
        ref = reference[which]
        assert set(got[which]) == set(ref)
        diff = [k for k in ref if not torch.equal(ref[k], got[which][k])]
        assert not diff, f"{which}.pt differs from the uninterrupted run in {diff[:5]}"
    assert got["metrics"] == reference["metrics"]
    assert got["summary"]["best_val_miou"] == reference["summary"]["best_val_miou"]
    assert got["summary"]["epochs"] == EPOCHS
    leftovers = [p for p in run_dir.rglob("*.tmp")]
    assert not leftovers, f"temp files of the killed write left behind: {leftovers}"


@pytest.mark.parametrize("case,point,span", [
    pytest.param(c, p, s, id=c, marks=[] if c in DEFAULT else [pytest.mark.slow])
    for c, p, s in CASES])
def test_sigkill_then_resume_matches_uninterrupted_run(case, point, span, reference,
                                                       trained_teacher, tmp_path):
    n = _draw(case, *span)
    out = tmp_path / "runs"
    argv = distill_argv(out, trained_teacher)
    run_and_kill(argv, f"{point}@{n}", tmp_path / "marker")
    run_dir = run_dir_of(out)
    epochs = assert_checkpoints_valid(run_dir)
    if case == "before-first-last-pt" or case == "teacher-validation":
        assert "last.pt" not in epochs  # the "nothing to resume yet" path: starts over
    if point.startswith("write:"):
        name = point.split(":")[1].split("@")[0]
        assert list(run_dir.rglob(f".{name}.*.tmp")), "the kill was not inside the write"
    _resume_and_compare(argv, run_dir, reference)
    record("interruptions", (case, f"{point}@{n}"))


@pytest.mark.slow
def test_two_kills_in_one_run_then_resume(reference, trained_teacher, tmp_path):
    """Killed mid-epoch, resumed, killed again while writing last.pt, resumed again."""
    out = tmp_path / "runs"
    argv = distill_argv(out, trained_teacher)
    first = f"train_step@{_draw('double-1', 2, 2 * STEPS_PER_EPOCH - 1)}"
    run_and_kill(argv, first, tmp_path / "marker")
    run_dir = run_dir_of(out)
    assert_checkpoints_valid(run_dir)
    second = "write:last.pt@1"  # the first last.pt the resumed process writes
    run_and_kill([*argv, "--resume", str(run_dir)], second, tmp_path / "marker")
    assert_checkpoints_valid(run_dir)
    _resume_and_compare(argv, run_dir, reference)
    record("interruptions", ("double-1", first))
    record("interruptions", ("double-2", f"resumed run, {second}"))


@pytest.mark.slow
def test_kill_at_a_random_moment(reference, trained_teacher, tmp_path):
    """No hook: SIGKILL after a random delay once training has started, wherever the run
    happens to be (possibly inside torch.save); the same guarantees hold."""
    out = tmp_path / "runs"
    argv = distill_argv(out, trained_teacher)
    delay = random.Random(f"{SEED}:wild").uniform(0.0, 4.0)
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("crash/*/config.yaml")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_dir = run_dir_of(out)
    epochs = assert_checkpoints_valid(run_dir)
    _resume_and_compare(argv, run_dir, reference)
    where = f"after {delay:.2f}s, last.pt epoch {epochs.get('last.pt', 'none')}"
    record("interruptions", ("random-moment", where))


def test_truncated_checkpoints_never_load_as_valid(tmp_path, tiny_checkpoint):
    """A last.pt cut anywhere (what a non-atomic write would leave) is refused by name."""
    data = tiny_checkpoint.read_bytes()
    cuts = sorted({1, 64, len(data) // 3, len(data) // 2, len(data) - 1024, len(data) - 22,
                   len(data) - 1, *random.Random(SEED).sample(range(2, len(data) - 1), 5)})
    for cut in cuts:
        p = tmp_path / f"last_{cut}.pt"
        p.write_bytes(data[:cut])
        with pytest.raises(UnsafeFileError, match=p.name):
            load_torch_file(p)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    """In-process: a run dir with config.yaml but no last.pt resumes from epoch 0 in the
    same dir; a folder that is not a run dir says there is nothing to resume."""
    from compress.train import fit, step_hook
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, ["train.epochs=1", "train.threads=1"])

    def stop(loss, epoch, step):
        raise KeyboardInterrupt

    with step_hook(stop), pytest.raises(KeyboardInterrupt):
        fit(cfg, show_progress=False)
    run = next((tmp_path / "runs" / "tiny").iterdir())
    assert (run / "config.yaml").is_file() and not (run / "checkpoints" / "last.pt").exists()
    assert fit(cfg, resume=run, show_progress=False).run_dir == run
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "starting over in the same run dir" in (run / "train.log").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(cfg, resume=tmp_path / "empty", show_progress=False)
