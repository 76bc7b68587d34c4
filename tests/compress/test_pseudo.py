"""Pseudo-labelling: thresholds, ensembles, class maps, the folder layout, mixtures."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from compress.classmap import parse_class_map
from compress.cli import app
from compress.data import SyntheticSource, build_train_set, folder_source
from compress.data.datasets import SYNTHETIC_CLASSES
from compress.models import create_model, save_checkpoint
from compress.pseudo import Ensemble, check_members, pseudo_label, teacher_weights
from compress.train import fit
from tests.conftest import tiny_config, tiny_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six synthetic images, their true masks, one broken image and a stray text file."""
    root = tmp_path_factory.mktemp("unlabelled")
    src = SyntheticSource(6, (64, 64), seed=7)
    (root / "images").mkdir()
    (root / "truth").mkdir()
    for i in range(6):
        img, mask, name = src.load(i)
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "truth" / f"{name}.png")
    (root / "images" / "broken.png").write_bytes(b"not a png at all")
    (root / "images" / "notes.txt").write_text("hello")
    return root


def test_layout_stats_and_threshold(trained_teacher, image_dir, tmp_path):
    out = tmp_path / "pseudo"
    stats = pseudo_label([trained_teacher], image_dir / "images", out, threshold=0.6,
                         truth=image_dir / "truth", previews=2, show=False)
    assert stats["images_done"] == 6 and stats["skipped"] == 1
    assert stats["skipped_files"][0]["name"] == "broken.png"
    assert "unreadable" in stats["skipped_files"][0]["reason"]
    assert stats["other_files"] == ["notes.txt"]
    assert json.loads((out / "stats.json").read_text())["images_done"] == 6
    assert (out / "classes.txt").read_text().split() == SYNTHETIC_CLASSES
    assert len(list((out / "previews").glob("*.png"))) == 2
    assert not list(out.rglob("*.tmp"))
    # each mask is the argmax where the averaged probability >= threshold, else ignore
    ens = Ensemble([trained_teacher], torch.device("cpu"))
    first = min((image_dir / "images").glob("synthetic_*.png"))
    probs = ens.probs(np.asarray(Image.open(first).convert("RGB")))
    conf, lab = probs.max(0)
    want = torch.where(conf >= 0.6, lab, torch.tensor(255)).numpy()
    got = np.asarray(Image.open(out / "masks" / f"{first.stem}.png"))
    np.testing.assert_array_equal(got, want)
    kept = sum(v["kept_pixels"] for v in stats["per_class"].values())
    assert stats["kept_fraction"] == pytest.approx(kept / stats["pixels"])
    assert 0 <= stats["truth"]["accuracy_kept"] <= 1
    # the folder source reads it back (image links, masks of the image's size)
    src = folder_source(out, "train", ignore_index=255)
    assert len(src) == 6 and src.load(0)[1].shape == (64, 64)


def test_ensemble_tta_and_class_thresholds(trained_teacher, image_dir, tmp_path):
    one = pseudo_label([trained_teacher], image_dir / "images", tmp_path / "a", threshold=0.5,
                       show=False, previews=0)
    two = pseudo_label([trained_teacher, trained_teacher], image_dir / "images", tmp_path / "b",
                       threshold=0.5, show=False, previews=0)
    assert one["per_class"] == two["per_class"]  # averaging equal teachers changes nothing
    tta = pseudo_label([trained_teacher], image_dir / "images", tmp_path / "c", threshold=0.5,
                       tta_flip=True, scales=(0.5, 1.0), show=False, previews=0)
    assert tta["scales"] == [0.5, 1.0] and tta["images_done"] == 6
    strict = pseudo_label([trained_teacher], image_dir / "images", tmp_path / "d", threshold=0.5,
                          class_thresholds={"background": 1.0}, show=False, previews=0)
    assert strict["per_class"]["background"]["kept_pixels"] <= 0.01 * max(
        1, one["per_class"]["background"]["kept_pixels"])
    assert strict["per_class"]["disc"]["kept_pixels"] == one["per_class"]["disc"]["kept_pixels"]
    with pytest.raises(ValueError, match="not a class"):
        pseudo_label([trained_teacher], image_dir / "images", tmp_path / "e",
                     class_thresholds={"Pole": 0.5}, show=False)


def test_class_map(trained_teacher, image_dir, tmp_path):
    cmap = tmp_path / "map.yaml"
    cmap.write_text("classes: [bg, shape]\n"
                    "map: {background: bg, disc: shape, box: shape, triangle: shape, ring: null}\n")
    names, m = parse_class_map(cmap, SYNTHETIC_CLASSES)
    assert names == ["bg", "shape"] and m.shape == (5, 2) and not m[4].any()
    stats = pseudo_label([trained_teacher], image_dir / "images", tmp_path / "o", threshold=0.3,
                         class_map=cmap, show=False, previews=0)
    assert stats["classes"] == ["bg", "shape"]
    values = set()
    for p in (tmp_path / "o" / "masks").glob("*.png"):
        values |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert values <= {0, 1, 255}
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [bg]\nmap: {background: bg, disc: bg}\n")
    with pytest.raises(ValueError, match="not mapped"):
        parse_class_map(bad, SYNTHETIC_CLASSES)


def test_class_map_soft_split_takes_the_argmax_of_mapped_probabilities(trained_teacher,
                                                                        image_dir, tmp_path):
    """Before: pseudo-label refused a split ({name: fraction}); KD took it only as a matrix."""
    cmap = tmp_path / "split.yaml"
    cmap.write_text("classes: [bg, round, angular]\n"
                    "map: {background: bg, disc: round, ring: ignore, box: angular,\n"
                    "      triangle: {round: 0.4, angular: 0.6}}\n")
    stats = pseudo_label([trained_teacher], image_dir / "images", tmp_path / "o", threshold=0.0001,
                         class_map=cmap, show=False, previews=0)
    assert stats["classes"] == ["bg", "round", "angular"]
    first = min((image_dir / "images").glob("synthetic_*.png"))
    p = Ensemble([trained_teacher], torch.device("cpu")).probs(
        np.asarray(Image.open(first).convert("RGB")))
    mapped = torch.stack([p[0], p[1] + 0.4 * p[3], p[2] + 0.6 * p[3], p[4]])  # last: ignored
    lab = mapped.argmax(0)
    want = torch.where(lab < 3, lab, torch.tensor(255)).numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "masks" / f"{first.stem}.png")), want)
    cmap.write_text("classes: [bg, round]\nmap: {background: bg, disc: round, ring: round, "
                    "box: round, triangel: round}\n")
    with pytest.raises(ValueError, match=rf"{cmap}: 'triangel' is not a teacher class \(did you "
                       r"mean 'triangle'\?\)"):
        pseudo_label([trained_teacher], image_dir / "images", tmp_path / "x", class_map=cmap,
                     show=False, previews=0)


def test_cli_and_mixture_training(trained_teacher, image_dir, tmp_path):
    out = tmp_path / "pseudo"
    res = runner.invoke(app, ["pseudo-label", "--teacher", str(trained_teacher), "--images",
                              str(image_dir / "images"), "--out", str(out), "--threshold", "0.5",
                              "--class-threshold", "disc=0.9", "--tta-flip", "--scales", "1",
                              "--size", "64x64", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "6 images labelled, 1 skipped" in res.output and "broken.png" in res.output
    # CamVid-style mixture: the labelled split plus the pseudo-labelled folder, 1:3
    cfg = tiny_config(tmp_path, ["train.epochs=1", "data.epoch_samples=16",
                                 f"data.extra_train=[{{kind: folder, root: '{out}', weight: 3}}]"])
    train_set = build_train_set(cfg.data, (0.5,) * 3, (0.25,) * 3, 255)
    w = train_set.sample_weights()
    assert len(train_set) == 16 + 6
    assert w[:16].sum().item() == pytest.approx(0.25) and w[16:].sum().item() == pytest.approx(0.75)
    assert train_set[17]["index"] == 17  # global index (the teacher cache relies on it)
    run = fit(cfg, show_progress=False).run_dir
    assert (run / "checkpoints" / "best.pt").is_file()


def test_rerun_drops_stale_labels_and_foreign_out_is_refused(trained_teacher, tmp_path):
    src = SyntheticSource(3, (64, 64), seed=3)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(src.load(i)[0]).save(imgs / f"im{i}.png")
    out = tmp_path / "out"
    pseudo_label([trained_teacher], imgs, out, show=False, previews=0)
    (out / "masks" / "mine.png").write_bytes(b"a user's own file")  # not ours: must stay
    (imgs / "im2.png").unlink()
    (imgs / "im1.png").write_bytes(b"broken now")
    stats = pseudo_label([trained_teacher], imgs, out, show=False, previews=0)
    assert stats["removed_stale"] == ["im1", "im2"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["im0.png", "mine.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["im0.png"]
    foreign = tmp_path / "foreign"
    (foreign / "masks").mkdir(parents=True)
    with pytest.raises(ValueError, match="not empty"):
        pseudo_label([trained_teacher], imgs, foreign, show=False)


def test_depth_maps_travel_with_their_pseudo_labelled_images(trained_teacher, tmp_path):
    from compress.data import create_source
    from compress.data.depth import read_depth, synthetic_depth, write_depth_png

    src = SyntheticSource(3, (64, 64), seed=4)
    imgs, depth = tmp_path / "kitti" / "images", tmp_path / "kitti" / "depth"
    imgs.mkdir(parents=True)
    depth.mkdir()
    for i in range(3):
        Image.fromarray(src.load(i)[0]).save(imgs / f"f{i}.png")
        if i < 2:  # f2 has no depth map
            write_depth_png(depth / f"f{i}.png", synthetic_depth(src, i))
    out = tmp_path / "pseudo"
    stats = pseudo_label([trained_teacher], imgs, out, show=False, previews=0, depth=depth)
    assert stats["depth_maps"] == 2 and stats["depth_missing"] == ["f2.png"]
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["f0.png", "f1.png"]
    np.testing.assert_array_equal(read_depth(out / "depth" / "f0.png"),
                                  read_depth(depth / "f0.png"))
    multi = create_source("folder", str(out), "train", ignore_index=255, depth="files")
    assert multi.load(0)[1] is not None and multi.load_depth(0, (64, 64)).max() > 0
    with pytest.raises(ValueError, match="depth folder not found"):
        pseudo_label([trained_teacher], imgs, tmp_path / "o2", show=False,
                     depth=tmp_path / "nope")


# ---------------------------------------------------------------- weighted ensembles


def _chance_teacher(path):
    """A teacher that calls every pixel "ring" (a rare class): chance level."""
    spec = tiny_spec(class_names=SYNTHETIC_CLASSES)
    model = create_model(spec)
    with torch.no_grad():
        model.segmentation_head[0].bias[4] = 50.0
    return save_checkpoint(path, model, spec)


def test_teacher_weights_are_normalised_and_combine_the_members(trained_teacher, image_dir,
                                                                 tmp_path):
    """Before: teachers were averaged with equal weights only."""
    weak = _chance_teacher(tmp_path / "weak.pt")
    ens = Ensemble([trained_teacher, weak], torch.device("cpu"), weights=[7, 3])
    assert ens.weights == pytest.approx([0.7, 0.3])
    image = np.asarray(Image.open(min((image_dir / "images").glob("synthetic_*.png"))).convert("RGB"))
    a, b = ens.member_probs(image)
    torch.testing.assert_close(ens.probs(image), 0.7 * a + 0.3 * b)
    torch.testing.assert_close(a, Ensemble([trained_teacher], torch.device("cpu")).probs(image))
    with pytest.raises(ValueError, match=r"--teacher-weight given 1 times for 2 --teacher"):
        teacher_weights([1.0], 2)
    with pytest.raises(ValueError, match=r"--teacher-weight 0: weights must be positive"):
        teacher_weights([1.0, 0.0], 2)


def test_weak_member_is_warned_with_its_checkpoint_and_score(trained_teacher, image_dir,
                                                             tmp_path):
    """Before: a chance-level second teacher was averaged in without a word."""
    weak = _chance_teacher(tmp_path / "weak.pt")
    args = ["pseudo-label", "--teacher", str(trained_teacher), "--teacher", str(weak),
            "--teacher-weight", "0.7", "--teacher-weight", "0.3", "--images",
            str(image_dir / "images"), "--device", "cpu", "-q"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--truth",
                              str(image_dir / "truth")])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, res.output
    assert re.match(rf"warning: teacher {re.escape(str(weak))} scores mIoU \d+\.\d\d, near "
                    r"chance \(20\.0 for 5 classes\) on the --truth masks$", warnings[0])
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["teacher_weights"] == pytest.approx([0.7, 0.3])
    good, bad = stats["members"]
    assert good["warning"] is None and good["miou"] > 2 * bad["miou"]
    assert stats["member_check"] == "scored on 6 labelled image(s) (--truth)"
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "p")])  # no labelled data
    assert res.exit_code == 0, res.output
    assert "weak-member check skipped: no labelled data (--truth masks)" in res.output
    assert "warning:" not in res.output


def test_member_far_below_the_best_is_warned_even_above_chance():
    from types import SimpleNamespace

    ens = SimpleNamespace(checkpoints=["a.pt", "b.pt"], weights=[0.5, 0.5])
    best = torch.eye(5, dtype=torch.int64) * 10
    poor = torch.eye(5, dtype=torch.int64) * 3 + torch.roll(torch.eye(5, dtype=torch.int64) * 7, 1, 1)
    rows = check_members(ens, [best, poor], SYNTHETIC_CLASSES, images=2)
    assert rows[0]["warning"] is None
    assert rows[1]["miou"] > 0.1  # above chance (half of 1/5)
    assert rows[1]["warning"] == "mIoU 17.65, far below the best member's 100.00"
    assert check_members(ens, [best, poor], SYNTHETIC_CLASSES, images=0)[1]["warning"] is None
