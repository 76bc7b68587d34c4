"""Depth targets: synthetic scenes get a deterministic depth map and a sparse LiDAR-like
sample without changing their images; real depth maps read as PNG-16 mm or .npy metres,
and bad files are refused naming the file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

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
