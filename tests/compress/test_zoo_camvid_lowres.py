"""The CamVid checkpoints at lower input sizes in zoo/camvid-lowres/ (README "The
lower-resolution lever, measured"): each file is listed with its sha256, loads with
load_model (weights_only), runs at the size its name says; with CamVid present (-m slow),
each re-scores to its listed val mIoU (scores.json: the rows of the README's table)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import CAMVID, REPO, check_shipped_checkpoint

ZOO = REPO / "zoo" / "camvid-lowres"
SUMS = dict(reversed(line.split()) for line in (ZOO / "SHA256SUMS").read_text().splitlines())
NAMES = sorted(SUMS)
SCORES = json.loads((ZOO / "scores.json").read_text())


def test_every_shipped_file_is_listed_and_scored():
    assert sorted(p.name for p in ZOO.glob("*.pt")) == NAMES == sorted(SCORES)


@pytest.mark.parametrize("name", NAMES)
def test_lowres_checkpoint_loads_at_its_size_and_matches_its_sha256(name):
    h, w = map(int, re.search(r"-(\d+)x(\d+)(?:-s\d+)?\.pt$", name).groups())
    check_shipped_checkpoint(ZOO / name, SUMS[name], (h, w))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_lowres_checkpoint_rescores_to_its_listed_miou(name, tmp_path):
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid not present at {CAMVID}")
    from compress.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(ZOO / name, CAMVID, "val", out=tmp_path)
    assert result["miou"] == pytest.approx(SCORES[name], abs=5e-4)
