"""Published dataset layouts (Cityscapes, PASCAL VOC 2012, ADE20K): tiny trees with the
real file names and value conventions, read through their label tables, trained and
scored for one epoch through the CLI."""

import json
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from compress.cli import app
from compress.config import DataConfig, SourceConfig
from compress.data import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    SOURCES,
    VOC_CLASSES,
    DataError,
    create_source,
)
from compress.data.labels import CITYSCAPES_LABEL_IDS, CITYSCAPES_LABELS
from compress.options import DataKind

H, W = 32, 64
CITY = "aachen"


def _rgb(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _grey(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _stripes(values: list[int]) -> np.ndarray:
    """An ``H x W`` mask of vertical stripes, one per value."""
    cols = np.array_split(np.arange(W), len(values))
    out = np.zeros((H, W), np.int64)
    for v, c in zip(values, cols):
        out[:, c] = v
    return out


def cityscapes_tree(root: Path, frames: int = 2) -> Path:
    for split in ("train", "val"):
        for f in range(frames):
            stem = f"{CITY}_{f:06d}_000019"
            _rgb(root / "leftImg8bit" / split / CITY / f"{stem}_leftImg8bit.png", f)
            _grey(root / "gtFine" / split / CITY / f"{stem}_gtFine_labelIds.png",
                  _stripes([0, 7, 8, 26, 33, 23]))
    return root


def voc_tree(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"]}
    palette = np.zeros((256, 3), np.uint8)
    palette[15] = (192, 128, 128)  # person, as in the VOC colour map
    palette[1] = (128, 0, 0)
    palette[255] = (224, 224, 192)
    for split, names in ids.items():
        lists = voc / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for k, n in enumerate(names):
            img = voc / "JPEGImages" / f"{n}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 40 * k, np.uint8)).save(img)
            mask = Image.fromarray(_stripes([0, 1, 255, 15]).astype(np.uint8), mode="P")
            mask.putpalette(palette.ravel().tolist())
            path = voc / "SegmentationClass" / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            mask.save(path)
    return root


def ade20k_tree(root: Path) -> Path:
    ade = root / "ADEChallengeData2016"
    for folder, tag in (("training", "train"), ("validation", "val")):
        for f in range(1, 3):
            stem = f"ADE_{tag}_{f:08d}"
            img = ade / "images" / folder / f"{stem}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 60 * f, np.uint8)).save(img)
            _grey(ade / "annotations" / folder / f"{stem}.png", _stripes([0, 1, 3, 150]))
    return root


def test_every_kind_is_registered_once():
    """The config's kinds, the CLI's --data-kind and the source table name the same set."""
    kinds = {"synthetic", *SOURCES}
    assert {k.value for k in DataKind} == kinds
    for model in (DataConfig, SourceConfig):
        assert set(typing.get_args(model.model_fields["kind"].annotation)) == kinds


def test_cityscapes_label_table():
    assert len(CITYSCAPES_LABELS) == 34 and len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[:2] == ["road", "sidewalk"] and CITYSCAPES_CLASSES[-1] == "bicycle"
    ids = CITYSCAPES_LABEL_IDS.apply(np.arange(34), 255, "x")
    assert (ids[[7, 8, 26, 33]] == [0, 1, 13, 18]).all()
    assert (ids[:7] == 255).all() and ids[23] == 10 and ids[24] == 11
    assert sorted(ids[ids != 255].tolist()) == list(range(19))  # each train id once


def test_cityscapes_layout_maps_label_ids(tmp_path):
    root = cityscapes_tree(tmp_path / "cityscapes")
    src = create_source("cityscapes", str(root), "val", ignore_index=255)
    assert len(src) == 2 and src.class_names == CITYSCAPES_CLASSES
    img, mask, name = src.load(0)
    assert img.shape == (H, W, 3) and name == f"{CITY}_000000_000019_leftImg8bit"
    assert np.unique(mask).tolist() == [0, 1, 10, 13, 18, 255]
    assert mask[0, 0] == 255 and mask[0, W // 6 + 1] == 0  # unlabeled, road
    # a run with another ignore index gets it where Cityscapes ignores
    mask = create_source("cityscapes", str(root), "val", ignore_index=19).load(0)[1]
    assert mask[0, 0] == 19 and 255 not in mask


def test_cityscapes_prefers_label_train_ids(tmp_path):
    root = cityscapes_tree(tmp_path / "cs")
    gt = root / "gtFine" / "val" / CITY
    _grey(gt / f"{CITY}_000000_000019_gtFine_labelTrainIds.png", _stripes([255, 5, 18]))
    src = create_source("cityscapes", str(root), "val", ignore_index=255)
    assert np.unique(src.load(0)[1]).tolist() == [5, 18, 255]
    assert np.unique(src.load(1)[1]).tolist() == [0, 1, 10, 13, 18, 255]  # labelIds


def test_cityscapes_errors_name_the_file(tmp_path):
    root = cityscapes_tree(tmp_path / "cs")
    bad = root / "gtFine" / "val" / CITY / f"{CITY}_000001_000019_gtFine_labelIds.png"
    _grey(bad, _stripes([7, 40]))
    with pytest.raises(DataError, match=r"_000001_000019_gtFine_labelIds.png: label value\(s\) "
                       r"\[40\] are not Cityscapes labelIds values \(0\.\.33\)"):
        create_source("cityscapes", str(root), "val", ignore_index=255).load(1)
    bad.unlink()
    with pytest.raises(DataError, match="_000001_000019_leftImg8bit.png: mask missing "
                       r"\(expected .*_000001_000019_gtFine_labelIds.png\)"):
        create_source("cityscapes", str(root), "val", ignore_index=255)
    with pytest.raises(DataError, match=r"gtFine/test: Cityscapes split 'test' not found"):
        (root / "leftImg8bit" / "test").mkdir()
        create_source("cityscapes", str(root), "test", ignore_index=255)
    with pytest.raises(DataError, match="not a Cityscapes root"):
        create_source("cityscapes", str(tmp_path), "val", ignore_index=255)


def test_voc_layout_reads_palette_indices(tmp_path):
    root = voc_tree(tmp_path / "voc")
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    for r in (root, root / "VOCdevkit" / "VOC2012"):  # the archive's top or VOC2012 itself
        src = create_source("voc", str(r), "train", ignore_index=255)
        img, mask, name = src.load(1)
        assert len(src) == 2 and name == "2007_000039" and img.shape == (H, W, 3)
        assert np.unique(mask).tolist() == [0, 1, 15, 255]  # indices, not RGB
    mask = create_source("voc", str(root), "val", ignore_index=21).load(0)[1]
    assert np.unique(mask).tolist() == [0, 1, 15, 21]  # the border is the run's ignore


def test_voc_errors_name_the_file(tmp_path):
    root = voc_tree(tmp_path / "voc")
    voc = root / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match=r"Segmentation/trainval.txt: VOC split list not "
                       r"found \(lists here: train, val\)"):
        create_source("voc", str(root), "trainval", ignore_index=255)
    _grey(voc / "SegmentationClass" / "2007_000033.png", _stripes([0, 22]))
    with pytest.raises(DataError, match=r"2007_000033.png: label value\(s\) \[22\] are not "
                       r"PASCAL VOC values \(0\.\.20, 255\)"):
        create_source("voc", str(root), "val", ignore_index=255).load(0)
    (voc / "JPEGImages" / "2007_000042.jpg").unlink()
    with pytest.raises(DataError, match="2007_000042.jpg: image missing"):
        create_source("voc", str(root), "val", ignore_index=255)


def test_ade20k_layout_reduces_zero_label(tmp_path):
    root = ade20k_tree(tmp_path / "ade")
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ADE20K_CLASSES[-1] == "flag"
    for split, tag in (("train", "train"), ("val", "val"), ("validation", "val")):
        src = create_source("ade20k", str(root), split, ignore_index=255)
        _img, mask, name = src.load(0)
        assert name == f"ADE_{tag}_00000001" and len(src) == 2
        assert np.unique(mask).tolist() == [0, 2, 149, 255]  # 1 -> wall, 3 -> sky, 0 ignored


def test_ade20k_errors_name_the_file(tmp_path):
    root = ade20k_tree(tmp_path / "ade")
    ade = root / "ADEChallengeData2016"
    _grey(ade / "annotations" / "validation" / "ADE_val_00000002.png", _stripes([151]))
    with pytest.raises(DataError, match=r"ADE_val_00000002.png: label value\(s\) \[151\] "
                       r"are not ADE20K values \(0\.\.150\)"):
        create_source("ade20k", str(root), "val", ignore_index=255).load(1)
    with pytest.raises(DataError, match=r"images/test: ADE20K split 'test' not found "
                       r"\(folders in .*images: training, validation"):
        create_source("ade20k", str(root), "test", ignore_index=255)


@pytest.mark.parametrize("kind,tree,classes", [
    ("cityscapes", cityscapes_tree, CITYSCAPES_CLASSES),
    ("voc", voc_tree, VOC_CLASSES),
    ("ade20k", ade20k_tree, ADE20K_CLASSES),
])
def test_layout_trains_and_evaluates_through_the_cli(tmp_path, kind, tree, classes):
    root = tree(tmp_path / kind)
    runner = CliRunner()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: {kind}\noutput_dir: {tmp_path / 'runs'}\n"
                      f"data: {{kind: {kind}, root: {root}, size: [32, 64], batch_size: 2}}\n"
                      "model: {decoder_channels: [16, 16, 8, 8, 8]}\n"
                      "train: {epochs: 1, vis_every: 0, warmup_epochs: 0, threads: 1}\n")
    r = runner.invoke(app, ["train", "-q", "-c", str(recipe)])
    assert r.exit_code == 0, r.output
    run = Path(r.output.strip().splitlines()[-1].removeprefix("run dir: "))
    r = runner.invoke(app, ["eval", str(run / "checkpoints" / "best.pt"), "--data", str(root),
                            "--kind", kind, "--split", "val"])
    assert r.exit_code == 0, r.output
    result = json.loads((run / "checkpoints" / "eval_best_val" / "eval.json").read_text())
    assert list(result["per_class_iou"]) == list(classes)
    assert 0 <= result["miou"] <= 1
