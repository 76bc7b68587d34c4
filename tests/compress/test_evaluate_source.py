"""``compress eval --score-at source``: logits resized back, scored on the original masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from compress.evaluate import evaluate_checkpoint, format_table


@pytest.fixture
def folder_data(tmp_path):
    root = tmp_path / "data"
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(5)) + "\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
            root / "images" / "val" / f"f{i}.png")
        mask = np.zeros((40, 56), np.uint8)
        mask[:, 28:] = 1
        mask[0, 0] = 255  # one ignored pixel per image
        Image.fromarray(mask).save(root / "masks" / "val" / f"f{i}.png")
    return root


def _scored_pixels(out) -> int:
    lines = (out / "confusion.csv").read_text().splitlines()[1:]
    return sum(int(v) for line in lines for v in line.split(",")[1:])


@pytest.mark.parametrize("score_at, pixels", [("network", 3 * 64 * 64), ("source", 3 * (40 * 56 - 1))])
def test_score_at(tmp_path, folder_data, tiny_checkpoint, score_at, pixels):
    out = tmp_path / score_at
    res = evaluate_checkpoint(tiny_checkpoint, folder_data, "val", kind="folder", out=out,
                              score_at=score_at)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["scored_at"] == score_at
    assert saved["score_sizes"] == ([[40, 56]] if score_at == "source" else [[64, 64]])
    if score_at == "source":  # every source pixel but the ignored one is scored
        assert _scored_pixels(out) == pixels
    else:  # nearest-resized masks: the ignored corner covers a few network pixels
        assert pixels - 3 * 4 <= _scored_pixels(out) < pixels
    assert f"scored at {score_at} resolution" in format_table(res)


def test_score_at_refuses_other_values(tmp_path, folder_data, tiny_checkpoint):
    with pytest.raises(ValueError, match="--score-at 'half'"):
        evaluate_checkpoint(tiny_checkpoint, folder_data, "val", kind="folder", score_at="half")
