"""Checkpoints users keep: periodic epoch_NNN.pt, the untrained snapshot, and the test-split
pass at the end of a run (eval.json, a figure, the summary)."""

from __future__ import annotations

import json

import pytest
import torch

from compress.train import fit
from tests.conftest import tiny_config
from tests.workflows.helpers import make_folder_dataset


def test_save_every_untrained_and_test_split(tmp_path):
    data = make_folder_dataset(tmp_path / "d", ["background", "disc", "box", "tri", "ring"],
                               {"train": 8, "val": 4, "test": 4})
    run = fit(tiny_config(tmp_path, ["data.kind=folder", f"data.root={data}", "train.epochs=2",
                                     "train.save_every=1", "train.save_untrained=true"]),
              show_progress=False).run_dir
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.glob("*.pt")) == ["best.pt", "epoch_001.pt", "epoch_002.pt",
                                                      "last.pt", "untrained.pt"]
    untrained = torch.load(ck / "untrained.pt", weights_only=True)
    assert untrained["epoch"] == 0 and untrained["spec"]["classes"] == 5
    assert torch.load(ck / "epoch_001.pt", weights_only=True)["epoch"] == 1
    test = json.loads((run / "test" / "eval.json").read_text())
    assert test["split"] == "test" and test["images"] == 4 and 0 <= test["miou"] <= 1
    assert (run / "visualizations" / "test.png").is_file()
    assert json.loads((run / "summary.json").read_text())["test_miou"] == test["miou"]
    assert "test split 'test' (4 images)" in (run / "train.log").read_text()
    # best.pt's per-image counts on the test split, named by file, summing to its mIoU
    from compress.evidence import ImageCounts

    per_image = ImageCounts.load(run / "test" / "per_image.npz")
    assert len(per_image.images) == 4 and per_image.meta["split"] == "test"
    assert per_image.miou() == pytest.approx(test["miou"])


def test_no_test_split_no_test_pass(tmp_path):
    run = fit(tiny_config(tmp_path, ["train.epochs=1"]), show_progress=False).run_dir
    assert not (run / "test").exists()
    assert json.loads((run / "summary.json").read_text())["test_miou"] is None
