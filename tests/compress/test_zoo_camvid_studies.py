"""The CamVid checkpoints of the README's studies beside zoo/camvid: zoo/camvid-lowres/ ("The
lower-resolution lever, measured") and zoo/camvid-levers/ (pruned and QAT students). Each
file is listed with its sha256, loads with load_model (weights_only), runs at the size its
name says; with CamVid present (-m slow), each re-scores to its listed val mIoU (scores.json:
the rows of the README's tables)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import CAMVID, REPO, check_shipped_checkpoint

ZOOS = [REPO / "zoo" / name for name in ("camvid-lowres", "camvid-levers")]
SUMS = {z: dict(reversed(line.split()) for line in (z / "SHA256SUMS").read_text().splitlines())
        for z in ZOOS}
SCORES = {z: json.loads((z / "scores.json").read_text()) for z in ZOOS}
FILES = [pytest.param(z, name, id=f"{z.name}/{name}") for z in ZOOS for name in sorted(SUMS[z])]


@pytest.mark.parametrize("zoo", ZOOS, ids=lambda z: z.name)
def test_every_shipped_file_is_listed_and_scored(zoo):
    assert sorted(p.name for p in zoo.glob("*.pt")) == sorted(SUMS[zoo]) == sorted(SCORES[zoo])


@pytest.mark.parametrize(("zoo", "name"), FILES)
def test_checkpoint_loads_at_its_size_and_matches_its_sha256(zoo, name):
    h, w = map(int, re.search(r"-(\d+)x(\d+)(?:-s\d+)?\.pt$", name).groups())
    check_shipped_checkpoint(zoo / name, SUMS[zoo][name], (h, w))


@pytest.mark.slow
@pytest.mark.parametrize(("zoo", "name"), FILES)
def test_checkpoint_rescores_to_its_listed_miou(zoo, name, tmp_path):
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid not present at {CAMVID}")
    from compress.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(zoo / name, CAMVID, "val", out=tmp_path)
    assert result["miou"] == pytest.approx(SCORES[zoo][name], abs=5e-4)
