"""Pseudo-labelling that survives a crash and splits across torchrun ranks (issue 25):
a killed run's labelled frames are kept and not redone, and two ranks write the masks and
the merged stats.json of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compress.data import SyntheticSource
from compress.pseudo import PROGRESS, Ensemble, pseudo_label
from tests.conftest import REPO

# stats that say how the run went rather than what it labelled
HOW = ("images_reused", "written", "removed_stale")


@pytest.fixture()
def frames(tmp_path):
    """Seven unlabelled frames and their true masks."""
    src = SyntheticSource(7, (64, 64), seed=11)
    for sub in ("images", "truth"):
        (tmp_path / sub).mkdir()
    for i in range(7):
        img, mask, _ = src.load(i)
        Image.fromarray(img).save(tmp_path / "images" / f"f{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "truth" / f"f{i}.png")
    return tmp_path


def _masks(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "masks").iterdir())}


def _what(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in HOW}


def test_a_killed_run_keeps_its_frames_and_the_rerun_labels_only_the_rest(
        trained_teacher, frames, tmp_path, monkeypatch):
    kw = {"truth": frames / "truth", "previews": 2, "show": False, "tta_flip": True}
    clean = pseudo_label([trained_teacher], frames / "images", tmp_path / "clean", **kw)

    calls, dying = [], [True]
    real = Ensemble.member_probs

    def dies_on_the_fourth(self, image):
        calls.append(1)
        if dying[0] and len(calls) == 4:
            dying[0] = False
            raise KeyboardInterrupt  # the machine going away, mid-way through frame 4
        return real(self, image)

    monkeypatch.setattr(Ensemble, "member_probs", dies_on_the_fourth)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        pseudo_label([trained_teacher], frames / "images", out, **kw)
    assert len(list((out / "masks").iterdir())) == 3
    assert not (out / "stats.json").exists()

    calls.clear()
    resumed = pseudo_label([trained_teacher], frames / "images", out, **kw)
    assert len(calls) == 4 - 1 + 1  # frames 4..7 only (frame 4 died before its record)
    assert resumed["images_reused"] == 3
    assert _masks(out) == _masks(tmp_path / "clean")
    assert _what(resumed) == _what(clean)
    assert resumed["written"]["previews"] == clean["written"]["previews"]
    assert not list((out / "progress").glob("rank-*.jsonl"))  # merged into one file
    assert len((out / PROGRESS).read_text().splitlines()) == 7

    # the same command again relabels nothing; changed settings relabel everything
    calls.clear()
    assert pseudo_label([trained_teacher], frames / "images", out, **kw)["images_reused"] == 7
    assert calls == []
    again = pseudo_label([trained_teacher], frames / "images", out, **{**kw, "threshold": 0.9})
    assert again["images_reused"] == 0 and len(calls) == 7


def test_an_edited_mask_or_a_changed_frame_is_labelled_again(trained_teacher, frames, tmp_path):
    out = tmp_path / "out"
    first = pseudo_label([trained_teacher], frames / "images", out, show=False, previews=0)
    want = _masks(out)
    (out / "masks" / "f1.png").write_bytes(b"edited by hand")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frames / "images" / "f2.png")
    with pytest.raises(ValueError, match="f1.png exists"):  # the user's edit is never touched
        pseudo_label([trained_teacher], frames / "images", out, show=False, previews=0)
    (out / "masks" / "f1.png").unlink()
    second = pseudo_label([trained_teacher], frames / "images", out, show=False, previews=0)
    assert second["images_reused"] == 5  # f1 (mask gone) and f2 (new frame) labelled again
    got = _masks(out)
    assert got["f1.png"] == want["f1.png"] and got["f2.png"] != want["f2.png"]
    assert first["images_done"] == second["images_done"] == 7


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes load torch and the teacher: ~20 s on 2 cores
def test_two_ranks_write_the_masks_and_stats_of_one_process(trained_teacher, frames, tmp_path):
    args = ["pseudo-label", "-q", "--teacher", str(trained_teacher), "--images",
            str(frames / "images"), "--truth", str(frames / "truth"), "--tta-flip",
            "--previews", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "compress.cli", *args, "--out",
                          str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                          f"--master-port={_port()}", "-m", "segcompress.cli", *args, "--out",
                          str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _masks(tmp_path / "two") == _masks(tmp_path / "one")
    a, b = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("one", "two"))
    assert _what(a) == _what(b) and b["images_done"] == 7
    records = [json.loads(x) for x in (tmp_path / "two" / PROGRESS).read_text().splitlines()]
    assert sorted(r["stem"] for r in records) == [f"f{i}" for i in range(7)]  # each once
    assert two.stdout.count("images labelled") == 1  # one summary, from rank 0
    # rank 0 refusing the output (an edited mask) stops the other rank too, at once
    (tmp_path / "two" / "masks" / "f3.png").write_bytes(b"edited by hand")
    again = subprocess.run(two.args, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode != 0 and "edited since the toolkit wrote it" in again.stderr
    assert (tmp_path / "two" / "masks" / "f3.png").read_bytes() == b"edited by hand"
