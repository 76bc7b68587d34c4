"""Depth targets: synthetic scenes get a deterministic depth map and a sparse LiDAR-like
sample without changing their images; real depth maps read as PNG-16 mm or .npy metres,
and bad files are refused naming the file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from compress.data import SyntheticSource
from compress.data.datasets import DataError
from compress.data.depth import lidar_sample, read_depth, synthetic_depth, write_depth_png

SCENE3 = "f8299b4cdc2ee4c83d55ea3ab434f32126bdfb879a4cca6ad38c4f2736e1cd9d"


def test_synthetic_images_are_unchanged_by_the_depth_scene():
    # sha256 of scene 3 (seed 0, 64x96) as drawn before depth existed
    img, mask, _ = SyntheticSource(8, (64, 96), seed=0).load(3)
    digest = hashlib.sha256(img.tobytes() + mask.tobytes()).hexdigest()
    assert digest == SCENE3


def test_synthetic_depth_is_deterministic_and_follows_the_ground():
    src = SyntheticSource(8, (64, 96), seed=0)
    d1, d2 = synthetic_depth(src, 3), synthetic_depth(SyntheticSource(8, (64, 96), 0), 3)
    assert d1.dtype == np.float32 and d1.shape == (64, 96) and np.array_equal(d1, d2)
    assert 2.0 <= d1.min() and d1.max() <= 25.0
    _, mask, regions = src.scene(3)
    background = mask == 0
    rows = np.nonzero(background.any(axis=1))[0]
    # the ground recedes: nearer at the bottom than at the top
    assert d1[rows.max()][background[rows.max()]].mean() < d1[rows.min()][background[rows.min()]].mean()
    last = regions[-1]  # drawn last, nothing covers it: one depth, its lowest row's ground
    assert np.unique(d1[last]).size == 1
    assert not np.array_equal(synthetic_depth(src, 4), d1)


def test_lidar_sample_keeps_scan_lines_only():
    depth = np.full((60, 80), 7.0, np.float32)
    s = lidar_sample(depth, seed=0, i=1, lines=10, keep=0.5)
    rows = np.nonzero((s > 0).any(axis=1))[0]
    assert 1 <= len(rows) <= 10 and rows.min() >= 24
    share = (s > 0).mean()
    assert 0.02 < share < 0.12
    assert np.all(s[s > 0] == 7.0)
    assert np.array_equal(s, lidar_sample(depth, seed=0, i=1, lines=10, keep=0.5))


def test_png16_millimetres_and_npy_metres_round_trip(tmp_path):
    d = np.array([[0.0, 1.234], [65.6, 10.0]], np.float32)
    back = read_depth(write_depth_png(tmp_path / "d.png", d))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [[0.0, 1.234], [65.535, 10.0]], atol=1e-6)
    np.save(tmp_path / "d.npy", np.array([[np.nan, 2.5]], np.float32))
    np.testing.assert_array_equal(read_depth(tmp_path / "d.npy"), [[0.0, 2.5]])


@pytest.mark.parametrize("name,content,match", [
    ("a.png", "rgb8", "16-bit millimetres"),
    ("b.npy", "int", "floats in metres"),
    ("c.npy", "rgb", r"one channel \[H, W\]"),
    ("d.tif", "none", ".png \\(16-bit mm\\) or .npy"),
    ("e.png", "junk", "not a readable PNG"),
])
def test_bad_depth_files_are_refused_naming_the_file(tmp_path, name, content, match):
    from PIL import Image

    path = tmp_path / name
    if content == "rgb8":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    elif content == "int":
        np.save(path, np.zeros((4, 4), np.int32))
    elif content == "rgb":
        np.save(path, np.zeros((4, 4, 3), np.float32))
    else:
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=match) as e:
        read_depth(path)
    assert str(path) in str(e.value)


def test_depth_of_another_size_than_its_image_is_refused(tmp_path):
    path = write_depth_png(tmp_path / "d.png", np.ones((4, 6), np.float32))
    with pytest.raises(DataError, match="depth size 6x4 != image size 8x4"):
        read_depth(path, shape=(4, 8))


def _folder(root, n=4, depth=True, masks=False, classes=False):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    src = SyntheticSource(n, (64, 64), seed=5)
    if depth:
        (root / "depth").mkdir()
    if masks:
        (root / "masks").mkdir()
    for i in range(n):
        img, mask, _ = src.load(i)
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        if depth:
            write_depth_png(root / "depth" / f"f{i}.png", lidar_sample(synthetic_depth(src, i), 5, i))
        if masks:
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"f{i}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(SyntheticSource.class_names))
    return root


def test_items_carry_depth_through_augmentation_and_resize(tmp_path):
    from compress.data import SegDataset, TrainAugment, create_source

    names = list(SyntheticSource.class_names)
    src = create_source("folder", str(_folder(tmp_path / "kitti")), "train", ignore_index=255,
                        depth="files", masks=False, class_names=names)
    aug = TrainAugment((32, 32), (1.0, 1.0), hflip=True, color_jitter=0.0, ignore_index=255)
    train = SegDataset(src, (32, 32), (0.5,) * 3, (0.25,) * 3, True, aug, with_depth=True)
    item = train[1]
    assert item["depth"].shape == (32, 32) and item["depth"].dtype == torch.float32
    assert (item["mask"] == 255).all()  # a depth-only source: no segmentation label
    assert 0 < (item["depth"] > 0).float().mean() < 0.3  # sparse, like LiDAR
    val = SegDataset(src, (32, 32), (0.5,) * 3, (0.25,) * 3, False, with_depth=True)
    assert val[1]["depth"].shape == (32, 32)
    seg = create_source("synthetic", None, "train", ignore_index=255, length=4, size=(32, 32))
    plain = SegDataset(seg, (32, 32), (0.5,) * 3, (0.25,) * 3, False, with_depth=True)
    assert torch.equal(plain[0]["depth"], torch.zeros(32, 32))  # no depth: all "no value"
    assert "depth" not in SegDataset(seg, (32, 32), (0.5,) * 3, (0.25,) * 3, False)[0]


def test_synthetic_depth_modes_and_bad_combinations(tmp_path):
    from compress.data import create_source

    dense = create_source("synthetic", None, "val", ignore_index=255, length=2, size=(32, 32),
                          depth="dense")
    lidar = create_source("synthetic", None, "val", ignore_index=255, length=2, size=(32, 32),
                          depth="lidar", masks=False)
    d, s = dense.load_depth(0, (32, 32)), lidar.load_depth(0, (32, 32))
    assert (d > 0).all() and np.all((s == 0) | (s == d))
    assert lidar.load(0)[1] is None and dense.load(0)[1] is not None
    with pytest.raises(DataError, match="'dense' is drawn for synthetic data only"):
        create_source("camvid", str(tmp_path), "train", ignore_index=11, depth="dense")
    with pytest.raises(DataError, match="'lidar' is drawn for synthetic data only"):
        create_source("folder", str(_folder(tmp_path / "real", classes=True)), "train",
                      ignore_index=255, depth="lidar", masks=False)
    with pytest.raises(DataError, match="no depth/ folder"):
        create_source("folder", str(_folder(tmp_path / "nodepth", depth=False, masks=True,
                                          classes=True)),
                      "train", ignore_index=255, depth="files")
    with pytest.raises(DataError, match="unknown depth mode 'stereo'"):
        create_source("synthetic", None, "train", ignore_index=255, depth="stereo")


def test_compress_synthetic_writes_a_depth_only_folder_dataset(tmp_path):
    from typer.testing import CliRunner

    from compress.data import create_source
    from segcompress.cli import app

    out = tmp_path / "kitti_like"
    r = CliRunner().invoke(app, ["synthetic", "--out", str(out), "--length", "3", "--size",
                                 "64x96", "--seed", "9", "--depth", "lidar", "--no-masks", "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "depth", "images"]
    src = create_source("folder", str(out), "val", ignore_index=255, depth="files",
                        masks=False)
    want = lidar_sample(synthetic_depth(SyntheticSource(3, (64, 96), 1009), 2), 1009, 2)
    np.testing.assert_allclose(src.load_depth(2, (64, 96)), want, atol=1e-3)  # mm PNG
    again = CliRunner().invoke(app, ["synthetic", "--out", str(out)])
    assert again.exit_code == 1 and "exists" in str(again.exception)
    assert not list(tmp_path.glob(".kitti_like.tmp-*"))
