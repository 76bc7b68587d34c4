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
