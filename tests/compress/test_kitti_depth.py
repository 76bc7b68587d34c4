"""KITTI's annotated depth (`data_depth_annotated`, 16-bit PNG, metres = value / 256, 0 = no
measurement) with the raw drives' left colour frames, as a depth-only source: a tiny tree
with KITTI's real names, read, refused when bent, and trained through the CLI as S0 does
(segmentation from a labelled set, depth from KITTI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from compress.cli import app
from compress.data import DataError, create_source

H, W = 64, 96
DRIVES = ("2011_09_26_drive_0001_sync", "2011_09_28_drive_0002_sync")


def kitti_tree(root: Path, frames: int = 2, raw_under: str = "") -> Path:
    """Both splits, two drives each with ``frames`` frames; frame numbers repeat across
    drives as in KITTI. Depth: 10 m + column / 8 on the lower half, 0 (no LiDAR) above."""
    for split in ("train", "val"):
        for d, drive in enumerate(DRIVES):
            for f in range(frames):
                name = f"{f + 5:010d}.png"
                gt = (root / "data_depth_annotated" / split / drive / "proj_depth" /
                      "groundtruth" / "image_02" / name)
                gt.parent.mkdir(parents=True, exist_ok=True)
                metres = np.zeros((H, W), np.float32)
                metres[H // 2:] = 10.0 + np.arange(W)[None] / 8 + d
                Image.fromarray(np.round(metres * 256).astype(np.uint16)).save(gt)
                rgb = root / raw_under / drive[:10] / drive / "image_02" / "data" / name
                rgb.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(d * 10 + f)
                Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(rgb)
    return root


@pytest.mark.parametrize("raw_under", ["", "raw"])
def test_frames_depth_and_names_are_read_as_kitti_ships_them(tmp_path, raw_under):
    root = kitti_tree(tmp_path / "kitti", raw_under=raw_under)
    src = create_source("kitti_depth", str(root), "train", ignore_index=255, depth="files",
                        masks=False, class_names=["road", "car"])
    assert len(src) == 4 and src.class_names == ["road", "car"]
    names = [src.name(i) for i in range(len(src))]
    assert names[0] == "2011_09_26_drive_0001_sync_0000000005" and len(set(names)) == 4
    image, mask, name = src.load(0)
    assert image.shape == (H, W, 3) and mask is None and name == names[0]
    depth = src.load_depth(0, (H, W))
    assert depth.dtype == np.float32 and (depth[: H // 2] == 0).all()
    assert depth[H // 2, 0] == pytest.approx(10.0) and depth[-1, 8] == pytest.approx(11.0)
    assert src.load_depth(2, (H, W))[-1, 0] == pytest.approx(11.0)  # the second drive


def test_bent_kitti_trees_are_refused_naming_the_file(tmp_path):
    root = kitti_tree(tmp_path / "kitti")
    kw = {"ignore_index": 255, "depth": "files", "masks": False}
    with pytest.raises(DataError, match="depth-only source: give it depth: files and masks"):
        create_source("kitti_depth", str(root), "train", ignore_index=255, depth="none")
    with pytest.raises(DataError, match=r"split 'test' not found \(splits in .*: train, val\)"):
        create_source("kitti_depth", str(root), "test", **kw)
    with pytest.raises(DataError, match="not a KITTI depth root"):
        create_source("kitti_depth", str(tmp_path), "train", **kw)
    gt = min((root / "data_depth_annotated" / "val").rglob("*.png"))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(gt)  # 8-bit: not KITTI's depth
    src = create_source("kitti_depth", str(root), "val", **kw)
    with pytest.raises(DataError, match=r"16-bit metres x 256"):
        src.load_depth(0, (H, W))
    victim = root / "2011_09_26" / DRIVES[0] / "image_02" / "data" / "0000000006.png"
    victim.unlink()
    with pytest.raises(DataError) as e:
        create_source("kitti_depth", str(root), "train", **kw)
    assert str(e.value).startswith(f"{victim}: colour frame missing for 0000000006.png of "
                                   f"{DRIVES[0]}: unpack the raw drive")


def test_a_multitask_student_trains_with_kitti_depth_through_the_cli(tmp_path):
    """S0's set-up: segmentation from the labelled split, depth from KITTI; the run
    validates depth on KITTI's val split."""
    root = kitti_tree(tmp_path / "kitti")
    kitti = f"kind: kitti_depth, root: {root}, depth: files, masks: false"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: kitti\noutput_dir: {tmp_path / 'runs'}\n"
        "data:\n  size: [64, 96]\n  synthetic_length: 8\n  synthetic_val_length: 4\n"
        f"  batch_size: 4\n  extra_train: [{{{kitti}, split: train}}]\n"
        f"  depth_val: {{{kitti}, split: val}}\n"
        "model:\n  decoder_channels: [16, 16, 8, 8, 8]\n  tasks: [{name: depth, kind: depth, "
        "min_depth: 1.0, max_depth: 80.0, channels: 8}]\n"
        "train: {epochs: 1, vis_every: 0, warmup_epochs: 0, threads: 1}\n")
    r = CliRunner().invoke(app, ["train", "-q", "-c", str(recipe)])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs" / "kitti").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    rows = (run / "metrics.csv").read_text()
    assert "val_depth_rmse" in rows and summary["best_val_miou"] >= 0
    assert "drawn_1" in rows  # the KITTI source was drawn from


def test_eval_scores_depth_on_a_depth_only_split(tmp_path):
    """Issue 23: `compress eval` could not score the depth-only split a run validated on
    (KITTI's val split, or a folder with depth/ and no masks/)."""
    from dataclasses import replace

    from compress.models import create_model, save_checkpoint
    from compress.multitask import MultiTaskModel
    from tests.conftest import tiny_spec

    root = kitti_tree(tmp_path / "kitti")
    spec = replace(tiny_spec(size=(64, 96), synthetic_names=True), tasks=[
        {"name": "depth", "kind": "depth", "min_depth": 1.0, "max_depth": 80.0,
         "channels": 8}])
    model = create_model(spec)
    assert isinstance(model, MultiTaskModel)
    ckpt = save_checkpoint(tmp_path / "mt.pt", model, spec)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(ckpt), "--data", str(root), "--kind", "kitti_depth",
                            "--split", "val", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["depth_only"] and result["images"] == 4 and "miou" not in result
    assert result["depth"]["pixels"] == 4 * (64 // 2) * 96  # the lower half of each frame
    assert "depth RMSE" in r.output
    r = runner.invoke(app, ["eval", str(ckpt), "--data", str(root), "--kind", "kitti_depth",
                            "--split", "val", "--compare", str(ckpt)])
    assert r.exit_code != 0 and "depth-only split" in str(r.exception) + r.output
    single = save_checkpoint(tmp_path / "seg.pt", create_model(replace(spec, tasks=None)),
                             replace(spec, tasks=None))
    r = runner.invoke(app, ["eval", str(single), "--data", str(root), "--kind", "kitti_depth",
                            "--split", "val", "--out", str(tmp_path / "ev2")])
    assert r.exit_code != 0 and "single-task model" in str(r.exception) + r.output


def test_eval_scores_depth_on_a_depth_only_folder(tmp_path):
    """The folder form of a depth-only split (images/ + depth/, no masks/, no
    classes.txt): the model's classes stand in."""
    from dataclasses import replace

    from compress.models import create_model, save_checkpoint
    from tests.compress.test_depth_data import _folder
    from tests.conftest import tiny_spec

    root = _folder(tmp_path / "depthonly", n=3)
    spec = replace(tiny_spec(synthetic_names=True), tasks=[
        {"name": "depth", "kind": "depth", "min_depth": 0.5, "max_depth": 80.0, "channels": 8}])
    ckpt = save_checkpoint(tmp_path / "mt.pt", create_model(spec), spec)
    r = CliRunner().invoke(app, ["eval", str(ckpt), "--data", str(root), "--kind", "folder",
                                 "--split", "val", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert result["depth_only"] and result["images"] == 3 and result["depth"]["pixels"] > 0
