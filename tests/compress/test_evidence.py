"""The paired bootstrap against cases with a known answer, per-image counts against the
confusion they must sum to, and the per_image.npz file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress.errors import InputError
from compress.evidence import (
    ImageCounter,
    ImageCounts,
    paired_bootstrap,
    verdict_from_interval,
)
from compress.metrics import image_counts, mean_iou, scores, update_confusion


def counts(inter, union, images=None, source="run") -> ImageCounts:
    """One run's counts from per-image lists (one class unless rows are given)."""
    inter, union = (np.asarray(v, np.int64).reshape(len(v), -1) for v in (inter, union))
    names = tuple(images or (f"img{i}" for i in range(len(inter))))
    return ImageCounts(names, inter, union, tuple(f"c{k}" for k in range(inter.shape[1])),
                       source)


def test_identical_sides_give_a_zero_interval():
    a = counts([[3, 1], [0, 5], [2, 2]], [[4, 2], [1, 6], [5, 3]])
    d = paired_bootstrap([a], [a])
    assert (d.delta_pts, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.verdict == "within noise" and d.resamples >= 1000


def test_every_resample_giving_the_same_delta_gives_that_interval():
    # every image of base has IoU 1/2 and every image of other 3/4, at different sizes:
    # any resample of the images scores 50 and 75, so Δ is 25 points on every draw
    base = counts([1, 2, 5], [2, 4, 10])
    other = counts([3, 6, 30], [4, 8, 40])
    d = paired_bootstrap([base], [other])
    assert (d.delta_pts, d.low, d.high) == (25.0, 25.0, 25.0)
    assert d.verdict == "better"
    worse = paired_bootstrap([other], [base])
    assert (worse.low, worse.high, worse.verdict) == (-25.0, -25.0, "worse")


def enumerated(base_runs, other_runs):
    """Two images: a resample is (0,0), (0,1), (1,0) or (1,1), each 1/4 likely; with
    thousands of draws every one occurs far more than 2.5% of the time, so the 95%
    percentile interval runs from the smallest to the largest of their Δs."""
    def m(c, pick):
        return mean_iou(c.intersection[list(pick)].sum(0), c.union[list(pick)].sum(0))

    deltas = [100 * (np.mean([m(c, pick) for c in other_runs])
                     - np.mean([m(c, pick) for c in base_runs]))
              for pick in ((0, 0), (0, 1), (1, 1))]
    return min(deltas), max(deltas)


def test_two_images_enumerated_exactly():
    base = counts([1, 1], [2, 2])  # 50 on any draw
    other = counts([2, 3], [2, 4])  # (A,A) 100, (A,B) 5/6, (B,B) 75
    d = paired_bootstrap([base], [other])
    assert (d.low, d.high) == pytest.approx((25.0, 50.0))
    assert (d.low, d.high) == pytest.approx(enumerated([base], [other]))
    assert d.delta_pts == pytest.approx(100 * 5 / 6 - 50) and d.verdict == "better"
    # the same point estimate, but one image no better than base: 0 is in the interval
    edge = counts([2, 1], [2, 2])  # 100, 75, 50
    e = paired_bootstrap([base], [edge])
    assert (e.low, e.high) == pytest.approx((0.0, 50.0)) and e.verdict == "within noise"


def test_several_seeds_use_the_delta_of_the_seed_means_per_resample():
    # base seeds score 40 and 60 on any draw (mean 50); other's seeds differ per image
    base = [counts([2, 4], [5, 10], source="b0"), counts([3, 6], [5, 10], source="b1")]
    other = [counts([2, 3], [2, 4], source="o0"), counts([1, 2], [2, 4], source="o1")]
    d = paired_bootstrap(base, other)
    # (A,A): 100 and 50 -> 75; (A,B): 5/6 and 3/6 -> 2/3; (B,B): 75 and 50 -> 62.5
    assert (d.low, d.high) == pytest.approx((12.5, 25.0))
    assert (d.low, d.high) == pytest.approx(enumerated(base, other))
    assert d.delta_pts == pytest.approx(100 * 2 / 3 - 50)


def test_multiclass_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    union = rng.integers(50, 200, size=(40, 4))
    base = counts(rng.integers(0, 50, size=(40, 4)), union)
    other = counts(np.minimum(base.intersection + rng.integers(0, 20, size=(40, 4)), union),
                   union)
    a = paired_bootstrap([base], [other], seed=3)
    b = paired_bootstrap([base], [other], seed=3)
    assert a == b  # reruns agree
    assert a.low <= a.delta_pts <= a.high and a.low > 0 and a.verdict == "better"
    c = paired_bootstrap([base], [other], seed=4)
    assert c.delta_pts == a.delta_pts and (c.low, c.high) != (a.low, a.high)
    assert a.delta_pts == pytest.approx(100 * (other.miou() - base.miou()))
    wide = paired_bootstrap([base], [other], seed=3, level=0.99)
    assert wide.low <= a.low and wide.high >= a.high
    with pytest.raises(ValueError, match="at least 1000"):
        paired_bootstrap([base], [other], resamples=999)


def test_images_are_paired_by_name_and_other_lists_refused():
    a = counts([1, 2, 3], [4, 4, 4], images=["x", "y", "z"], source="runs/a")
    shuffled = counts([3, 1, 2], [4, 4, 4], images=["z", "x", "y"], source="runs/b")
    assert paired_bootstrap([a], [shuffled]).high == 0.0  # the same per-image scores
    other = counts([1, 2, 3], [4, 4, 4], images=["x", "y", "w"], source="runs/c")
    with pytest.raises(InputError, match=r"runs/a and runs/c were not scored on the same "
                                         r"images.*only in the first: z.*only in the second: w"):
        paired_bootstrap([a], [other])
    named = ImageCounts(a.images, a.intersection, a.union, ("road",), "runs/d")
    with pytest.raises(InputError, match=r"runs/a and runs/d were scored on different "
                                         r"classes \(c0 vs road\)"):
        paired_bootstrap([a], [named])


def test_verdict_from_interval():
    assert verdict_from_interval(0.1, 2.0) == "better"
    assert verdict_from_interval(-2.0, -0.1) == "worse"
    assert verdict_from_interval(-1.0, 1.0) == "within noise"
    assert verdict_from_interval(0.0, 1.0) == "within noise"


def test_image_counts_sum_to_the_confusion_and_its_miou():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    target[0, :2] = 255
    pred = torch.randint(0, 3, (3, 8, 8), generator=g)  # class 3 never predicted
    target[:, :, 0][target[:, :, 0] == 3] = 255
    conf = update_confusion(torch.zeros(4, 4, dtype=torch.int64), pred, target, 255)
    inter, union = image_counts(pred, target, 255, 4)
    assert inter.dtype == torch.int64 and inter.shape == (3, 4)
    assert torch.equal(inter.sum(0), conf.diag())
    assert torch.equal(union.sum(0), conf.sum(0) + conf.sum(1) - conf.diag())
    assert float(mean_iou(inter.sum(0), union.sum(0))) == pytest.approx(
        scores(conf, list("abcd"))["miou"])
    # one image alone is its own confusion
    one = update_confusion(torch.zeros(4, 4, dtype=torch.int64), pred[1:2], target[1:2], 255)
    assert torch.equal(inter[1], one.diag())


def test_counter_file_round_trip(tmp_path):
    counter = ImageCounter("runs/a")
    pred = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 1]]])
    target = torch.tensor([[[0, 1], [0, 255]], [[0, 0], [1, 1]]])
    counter.add(pred[:1], target[:1], 255, ["a.png"], ["bg", "fg"])
    counter.add(pred[1:], target[1:], 255, ["b.png"], ["bg", "fg"])
    c = counter.counts(epoch=3)
    assert c.intersection.tolist() == [[1, 1], [2, 1]]
    assert c.union.tolist() == [[2, 2], [3, 2]]
    path = c.save(tmp_path / "val" / "per_image.npz")
    back = ImageCounts.load(path)
    assert back.images == ("a.png", "b.png") and back.class_names == ("bg", "fg")
    assert np.array_equal(back.intersection, c.intersection) and back.meta == {"epoch": 3}
    assert back.miou() == pytest.approx(c.miou())
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a per-image scores file"):
        ImageCounts.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([object()]))
    with pytest.raises(ValueError, match="not a per-image scores file"):
        ImageCounts.load(tmp_path / "obj.npz")


def test_a_run_keeps_best_pt_per_image_val_counts_and_old_runs_are_rescored(tmp_path):
    from compress.models import read_checkpoint
    from compress.rundir import VAL_PER_IMAGE, val_image_counts
    from compress.train import fit
    from tests.conftest import tiny_config

    run = fit(tiny_config(tmp_path, ["train.epochs=2"]), show_progress=False).run_dir
    best = read_checkpoint(run / "checkpoints" / "best.pt")
    kept = ImageCounts.load(run / VAL_PER_IMAGE)
    assert kept.meta["epoch"] == best["epoch"] and len(kept.images) == 8
    assert kept.images[0].startswith("synthetic_") and len(set(kept.images)) == 8
    assert kept.miou() == pytest.approx(best["metrics"]["miou"], abs=1e-9)
    said = []
    read = val_image_counts(run, say=said.append)  # the file is read, nothing rescored
    assert said == [] and np.array_equal(read.union, kept.union)
    (run / VAL_PER_IMAGE).unlink()  # a run from before per-image counts
    again = val_image_counts(run, write=False, say=said.append)
    assert len(said) == 1 and "scoring checkpoints/best.pt on its val split" in said[0]
    assert not (run / VAL_PER_IMAGE).exists()
    assert again.images == kept.images
    assert np.array_equal(again.intersection, kept.intersection)
    assert np.array_equal(again.union, kept.union)


def test_seed_comparison_of_saved_evals_has_the_known_answer(tmp_path):
    """`compress delta` reads `compress eval` folders (or their per_image.npz): seed means,
    Δ of the means with its interval, and the seed-paired differences, each known here."""
    from compress.evidence import format_seed_comparison, seed_comparison

    def saved(name, iou_num):  # every image at IoU iou_num/8: any resample scores the same
        path = tmp_path / name
        path.mkdir()
        counts([iou_num, 2 * iou_num, 5 * iou_num], [8, 16, 40], source=name).save(
            path / "per_image.npz")
        return path

    base = [saved("b0", 4), saved("b1", 5)]  # 50 and 62.5
    other = [saved("r0", 6) / "per_image.npz", saved("r1", 6)]  # 75 and 75
    res = seed_comparison(base, other)
    assert [r["miou"] for r in res["baseline"]["runs"]] == [50.0, 62.5]
    assert res["baseline"]["miou_mean"] == 56.25 and res["recipe"]["miou_std"] == 0.0
    assert res["delta_pts"] == pytest.approx(18.75)
    assert res["delta_ci"] == [pytest.approx(18.75), pytest.approx(18.75)]
    assert res["verdict"] == "better"
    assert res["seed_deltas"] == [25.0, 12.5] and res["seed_delta_mean"] == 18.75
    assert res["seed_delta_std"] == pytest.approx(np.std([25.0, 12.5], ddof=1))
    text = format_seed_comparison(res)
    assert "+18.75 [+18.75, +18.75]" in text and "better" in text and "+25.00 / +12.50" in text
    assert "seed_deltas" not in seed_comparison(base, other[:1])  # unequal seeds: no pairs


def test_delta_command_names_a_folder_without_scores(tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app

    (tmp_path / "empty").mkdir()
    counts([1], [2]).save(tmp_path / "a.npz")
    r = CliRunner().invoke(app, ["delta", str(tmp_path / "a.npz"),
                                 "--baseline", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "empty: no per_image.npz" in str(r.exception) + r.output
    r = CliRunner().invoke(app, ["delta", str(tmp_path / "a.npz"), "--baseline",
                                 str(tmp_path / "a.npz"), "--json", str(tmp_path / "d.json")])
    assert r.exit_code == 0, r.output
    assert "within noise" in r.output and (tmp_path / "d.json").is_file()


def test_delta_command_compares_named_recipes_and_draws_them(tmp_path):
    """`compress delta --recipe NAME=RUN,RUN ...`: every named recipe against the same
    baseline, printed, in the JSON by name, and drawn (the plot's rows are the results)."""
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.evidence_plot import VERDICT_COLOURS, delta_rows

    def saved(name, iou_num):
        path = tmp_path / name
        path.mkdir()
        counts([iou_num, 2 * iou_num, 5 * iou_num], [8, 16, 40], source=name).save(
            path / "per_image.npz")
        return str(path)

    base = [saved("b0", 4), saved("b1", 5)]  # 50, 62.5
    up = ",".join([saved("u0", 6), saved("u1", 6)])  # 75, 75: +18.75
    down = ",".join([saved("d0", 3), saved("d1", 3)])  # 37.5: -18.75
    args = ["delta", "--recipe", f"up={up}", "--recipe", f"down={down}",
            "--baseline", base[0], "--baseline", base[1],
            "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "d.md"),
            "--baseline-name", "no KD", "--plot", str(tmp_path / "d.png")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "== up" in r.output and "== down" in r.output
    assert "+18.75 [+18.75, +18.75]" in r.output and "-18.75 [-18.75, -18.75]" in r.output
    res = json.loads((tmp_path / "d.json").read_text())["comparisons"]
    assert [c["name"] for c in res] == ["up", "down"]
    assert [c["verdict"] for c in res] == ["better", "worse"]
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "d.md").read_text().splitlines()
    assert table[2] == "| no KD | 50.00 / 62.50 | 56.25 ± 8.84 | | | |"
    assert table[3] == ("| up | 75.00 / 75.00 | 75.00 ± 0.00 | +18.75 [+18.75, +18.75] | "
                        "+25.00 / +12.50 (+18.75 ± 8.84) | better |")
    assert table[4].startswith("| down | 37.50 / 37.50 |") and table[4].endswith("| worse |")
    rows = delta_rows([(c["name"], c) for c in res])
    assert [r["colour"] for r in rows] == [VERDICT_COLOURS["better"], VERDICT_COLOURS["worse"]]
    assert rows[0]["seeds"] == [25.0, 12.5] and rows[1]["text"].startswith("-18.75 [")
    assert CliRunner().invoke(app, args).exit_code == 0  # its own files: written over
    (tmp_path / "mine.png").write_bytes(b"user")
    r = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "mine.png")])
    assert r.exit_code != 0 and (tmp_path / "mine.png").read_bytes() == b"user"
    for bad in ("up", "=a,b", "up="):
        r = CliRunner().invoke(app, ["delta", "--recipe", bad, "--baseline", base[0]])
        assert r.exit_code != 0 and "expected NAME=RUN" in str(r.exception) + r.output
    r = CliRunner().invoke(app, ["delta", base[0], "--recipe", f"up={up}", "--baseline", base[0]])
    assert r.exit_code != 0 and "not both" in r.output
