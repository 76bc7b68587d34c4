"""``compress eval`` keeps each checkpoint's results apart, and a plain state_dict is scored
at the size the user states, with the data's class names."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from compress.evaluate import evaluate_checkpoint
from compress.models import create_model


def test_two_checkpoints_in_one_folder_keep_their_own_results(tmp_path, tiny_checkpoint):
    """Before: both wrote <dir>/eval_val/ and the second overwrote the first."""
    other = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, other)
    a = evaluate_checkpoint(tiny_checkpoint, tmp_path, "val", kind="synthetic")
    b = evaluate_checkpoint(other, tmp_path, "val", kind="synthetic")
    assert a["eval_json"] != b["eval_json"]
    assert json.loads((tmp_path / "eval_tiny_val" / "eval.json").read_text())["checkpoint"] == \
        str(tiny_checkpoint)
    assert json.loads((tmp_path / "eval_other_val" / "eval.json").read_text())["checkpoint"] == \
        str(other)


def test_plain_state_dict_needs_a_size_and_takes_class_names_from_the_data(tmp_path):
    """Before: a default size was used silently and classes were named class_0.."""
    from tests.conftest import tiny_spec

    sd = tmp_path / "plain.pt"
    torch.save(create_model(tiny_spec(decoder_channels=None)).state_dict(), sd)
    kw = {"kind": "synthetic", "arch": "Unet", "encoder": "tu-efficientnet_lite0", "classes": 5}
    with pytest.raises(ValueError, match="give --size"):
        evaluate_checkpoint(sd, tmp_path, "val", **kw)
    res = evaluate_checkpoint(sd, tmp_path, "val", size=(64, 64), **kw)
    assert "background" in res["per_class_iou"] and "class_0" not in res["per_class_iou"]
    assert res["size"] == [64, 64]


def test_eval_with_a_reference_gives_the_paired_interval(tmp_path, tiny_checkpoint):
    """``compress eval A --compare B``: both scored on the same images, Δ = A − B with its
    paired bootstrap interval in eval.json and on the terminal."""
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.evidence import ImageCounts, paired_bootstrap
    from compress.models import save_checkpoint
    from tests.conftest import tiny_spec

    torch.manual_seed(1)
    spec = tiny_spec()  # the fixture's classes (other names are refused: a paired test
    # needs the same classes on both sides)
    other = save_checkpoint(tmp_path / "other.pt", create_model(spec), spec, epoch=0)
    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", str(other), "--data", str(tmp_path), "--kind",
                                   "synthetic", "--compare", str(tiny_checkpoint),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads((out / "eval.json").read_text())
    ref = json.loads((out / "reference" / "eval.json").read_text())
    c = got["comparison"]
    assert ref["checkpoint"] == str(tiny_checkpoint) and c["reference_miou"] == ref["miou"]
    a, b = ImageCounts.load(out / "per_image.npz"), ImageCounts.load(out / "reference" / "per_image.npz")
    assert a.images == b.images and len(a.images) == got["images"] == c["images"]
    assert a.miou() == pytest.approx(got["miou"]) and b.miou() == pytest.approx(ref["miou"])
    want = paired_bootstrap([b], [a])
    assert c["delta_pts"] == pytest.approx((got["miou"] - ref["miou"]) * 100)
    assert c["delta_ci"] == pytest.approx([want.low, want.high]) and c["resamples"] >= 1000
    assert c["verdict"] == want.verdict and c["delta_ci"][0] <= c["delta_pts"] <= c["delta_ci"][1]
    assert f"Δ mIoU {c['delta_pts']:+.2f} pts, 95% CI" in res.output and c["verdict"] in res.output

    # a checkpoint against itself: the same predictions, nothing to tell apart
    same = evaluate_checkpoint(tiny_checkpoint, tmp_path, "val", kind="synthetic",
                               reference=tiny_checkpoint, out=tmp_path / "self")
    assert same["comparison"]["delta_ci"] == [0.0, 0.0]
    assert same["comparison"]["verdict"] == "within noise"
