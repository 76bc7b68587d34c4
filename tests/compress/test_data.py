import numpy as np
import pytest
from PIL import Image

from compress.config import DataConfig
from compress.data import DataError, SyntheticSource, build_split, create_source
from tests.conftest import CAMVID


def test_synthetic_is_deterministic_by_seed():
    a = SyntheticSource(4, (64, 64), seed=3).load(2)
    b = SyntheticSource(4, (64, 64), seed=3).load(2)
    c = SyntheticSource(4, (64, 64), seed=4).load(2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert set(np.unique(a[1])) <= set(range(5))


def test_train_augmentation_only_in_training_and_keeps_ignore():
    cfg = DataConfig(size=(64, 64), synthetic_length=4)
    train = build_split(cfg, "train", (0.5,) * 3, (0.5,) * 3, 255, train=True)
    val = build_split(cfg, "val", (0.5,) * 3, (0.5,) * 3, 255, train=False)
    t = train[0]
    assert t["image"].shape == (3, 64, 64) and t["mask"].shape == (64, 64)
    assert "geometry" in t and "geometry" not in val[0]
    train.set_epoch(1)
    assert not np.array_equal(train[0]["image"].numpy(), t["image"].numpy())


def _folder(tmp_path, image_size=(32, 32), mask_size=(32, 32), value=1, mask=True):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("bg\nthing\n")
    Image.fromarray(np.zeros((*image_size, 3), np.uint8)).save(root / "images" / "a.png")
    if mask:
        Image.fromarray(np.full(mask_size, value, np.uint8)).save(root / "masks" / "a.png")
    return root


def _load(root):
    return create_source("folder", str(root), "train", ignore_index=255).load(0)


def test_folder_layout_loads(tmp_path):
    img, mask, name = _load(_folder(tmp_path))
    assert img.shape == (32, 32, 3) and mask.max() == 1 and name == "a"


@pytest.mark.parametrize("kwargs,msg", [
    ({"mask": False}, "mask missing"),
    ({"mask_size": (16, 32)}, "mask size"),
    ({"value": 7}, "label value"),
])
def test_folder_errors_name_the_file(tmp_path, kwargs, msg):
    root = _folder(tmp_path, **kwargs)
    with pytest.raises(DataError, match=msg) as e:
        _load(root)
    assert "a.png" in str(e.value)


def test_truncated_and_grey_images(tmp_path):
    root = _folder(tmp_path)
    img = root / "images" / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)  # grey-scale: converted to RGB
    assert _load(root)[0].shape == (32, 32, 3)
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(DataError, match="a.png"):
        _load(root)


def test_missing_classes_file_and_root(tmp_path):
    root = _folder(tmp_path)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        _load(root)
    with pytest.raises(DataError, match="not found"):
        create_source("camvid", str(tmp_path / "nope"), "train", ignore_index=11)


@pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid not present at ../shared/data/camvid")
def test_camvid_segnet_layout():
    src = create_source("camvid", str(CAMVID), "val", ignore_index=11)
    assert len(src) == 101 and len(src.class_names) == 11
    img, mask, _ = src.load(0)
    assert img.shape == (360, 480, 3) and mask.shape == (360, 480)
    assert mask.max() <= 11


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_images_is_the_evaluation_split_of_a_training_config(split):
    """The one 'images of split X' API gives what build_split gave for evaluation."""
    import torch

    from compress.data import split_classes, split_images

    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    old = build_split(DataConfig(kind="synthetic", size=(64, 96)), split, mean, std, 255)
    new = split_images("synthetic", None, split, size=(64, 96), mean=mean, std=std,
                       ignore_index=255)
    assert len(new) == len(old) == (96 if split == "train" else 32)
    assert list(new.class_names) == list(old.class_names) == split_classes("synthetic", None, split)
    for i in (0, len(new) - 1):
        assert torch.equal(new[i]["image"], old[i]["image"])
        assert torch.equal(new[i]["mask"], old[i]["mask"])
    assert len(split_images("synthetic", None, split, size=(64, 64), mean=mean, std=std,
                            ignore_index=255, count=5)) == 5
