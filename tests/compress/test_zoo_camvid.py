"""The CamVid checkpoints shipped in zoo/camvid/ (README "Students on CamVid"): each file
matches its listed sha256, loads with load_model (weights_only) and maps a 192x256 image
to 11-class logits; with CamVid present (-m slow), each re-scores to its listed val mIoU."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CAMVID, REPO, check_shipped_checkpoint

ZOO = REPO / "zoo" / "camvid"
SUMS = dict(reversed(line.split()) for line in (ZOO / "SHA256SUMS").read_text().splitlines())
NAMES = sorted(SUMS)


def test_every_shipped_file_is_listed():
    assert sorted(p.name for p in ZOO.glob("*.pt")) == NAMES
    assert sum((ZOO / n).stat().st_size for n in NAMES) < 60 * 2**20


def test_readme_lists_the_same_digests():
    readme = (REPO / "README.md").read_text()
    for name, digest in SUMS.items():
        assert f"{digest}  {name}" in readme, f"README's sha256 of {name} is stale"


@pytest.mark.parametrize("name", NAMES)
def test_zoo_checkpoint_loads_and_matches_its_sha256(name):
    check_shipped_checkpoint(ZOO / name, SUMS[name], (192, 256))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_zoo_checkpoint_rescores_to_its_listed_miou(name, tmp_path):
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid not present at {CAMVID}")
    from compress.evaluate import evaluate_checkpoint

    listed = json.loads((ZOO / "scores.json").read_text())[name]
    result = evaluate_checkpoint(ZOO / name, CAMVID, "val", out=tmp_path)
    assert result["miou"] == pytest.approx(listed, abs=5e-4)
