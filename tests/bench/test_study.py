"""``compress compare``: recipes x seeds, aggregation, paired bootstrap verdicts, outputs."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.cli_study import train_run
from bench.launch import local_launcher
from bench.study import (
    LatencyConfig,
    RecipeConfig,
    StudyConfig,
    load_study,
    run_study,
    time_models,
)
from compress.config import ConfigError, load_config
from compress.errors import InputError
from compress.evidence import ImageCounts, paired_bootstrap
from segcompress.cli import app

runner = CliRunner()

TINY = """\
name: tiny
data: {size: [64, 64], synthetic_length: 16, synthetic_val_length: 8, batch_size: 4}
model: {decoder_channels: [16, 16, 8, 8, 8]}
train: {epochs: 1, lr: 0.003, warmup_epochs: 0, vis_every: 0, threads: 1}
"""


def test_study_config_errors(tmp_path):
    with pytest.raises(ValueError, match="baseline"):
        StudyConfig(baseline="x", recipes=[RecipeConfig(name="a", config="a.yaml")])
    with pytest.raises(ValueError, match="either 'config' or 'runs'"):
        RecipeConfig(name="a")
    bad = tmp_path / "s.yaml"
    bad.write_text("baseline: a\nrecipes: [{name: a, config: a.yaml}]\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_study(bad)


def test_latency_is_interleaved_and_positive():
    models = {"a": torch.nn.Conv2d(3, 4, 3), "b": torch.nn.Conv2d(3, 8, 3)}
    res = time_models(models, {"a": (32, 32), "b": (32, 32)}, threads=1, warmup=1, repeats=4)
    assert set(res) == {"a", "b"} and all(v["ms_median"] > 0 and v["repeats"] == 4
                                          for v in res.values())


@pytest.mark.slow  # trains a study; workflows 002 and 004 run compare through the CLI
def test_compare_trains_collects_and_writes(trained_teacher, tmp_path):
    run_cfg = tmp_path / "tiny.yaml"
    run_cfg.write_text(TINY)
    study = StudyConfig(
        name="s", output_dir=str(tmp_path / "studies"), baseline="no-kd", seeds=[0, 1],
        recipes=[
            RecipeConfig(name="no-kd", config=str(run_cfg)),
            RecipeConfig(name="kd", config=str(run_cfg), overrides=[
                f"teacher.checkpoint={trained_teacher}", "teacher.allow_weak=true",
                "w_task=0.5", "kd.response.weight=0.5"]),
            RecipeConfig(name="same", config=str(run_cfg)),  # the baseline again
        ],
        latency=LatencyConfig(warmup=1, repeats=3),
    )
    out = run_study(study, show=False, log=lambda *_: None, launch=local_launcher(train_run))
    for f in ["comparison.md", "comparison.csv", "comparison.json", "curves.png", "miou.png",
              "delta.png"]:
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    runs = [r for r in rows if r["row"] == "run"]
    aggs = {r["recipe"]: r for r in rows if r["row"] == "recipe"}
    assert len(runs) == 6 and set(aggs) == {"no-kd", "kd", "same"}
    assert {"iou_background", "iou_disc", "params", "gmacs", "ms_median", "threads"} <= set(rows[0])
    assert aggs["no-kd"]["verdict"] == "baseline" and float(aggs["no-kd"]["delta_pts"]) == 0
    kd_mious = [float(r["miou"]) for r in runs if r["recipe"] == "kd"]
    assert float(aggs["kd"]["miou"]) == pytest.approx(sum(kd_mious) / 2, abs=1e-3)
    assert int(aggs["kd"]["params"]) > 0 and float(aggs["kd"]["gmacs"]) > 0
    md = (out / "comparison.md").read_text()
    assert "mIoU mean ± std" in md and "1 thread(s)" in md and "Per-class IoU" in md
    assert "Δ 95% CI" in md and "2000 resamples" in md

    # the paired bootstrap over the val images of every seed's best.pt
    res = json.loads((out / "comparison.json").read_text())
    by = {a["recipe"]: a for a in res["recipes"]}
    assert "delta_ci" not in by["no-kd"] and res["bootstrap"]["resamples"] >= 1000

    def counts(recipe):
        return [ImageCounts.load(out / "runs" / recipe / f"seed{k}" / "val" / "per_image.npz")
                for k in (0, 1)]

    want = paired_bootstrap(counts("no-kd"), counts("kd"))
    kd = by["kd"]
    assert kd["delta_ci"] == pytest.approx([want.low, want.high])
    assert kd["delta_ci"][0] <= kd["delta_pts"] <= kd["delta_ci"][1]
    assert kd["delta_pts"] == pytest.approx(want.delta_pts, abs=1e-6)  # best.pt's own mIoU
    assert kd["verdict"] == want.verdict and kd["ci_images"] == 8
    assert float(aggs["kd"]["delta_ci_low"]) == pytest.approx(want.low, abs=1e-4)
    # the same recipe and seeds train the same weights: Δ is 0 on every resample
    assert by["same"]["delta_ci"] == [0.0, 0.0] and by["same"]["verdict"] == "within noise"
    assert "| same | 2 |" in md and "[+0.00, +0.00] | +0.0 | within noise |" in md
    # delta.png draws these rows: each recipe's interval and its seed-paired Δ
    from bench.study import delta_comparisons

    drawn = dict(delta_comparisons(res))
    assert set(drawn) == {"kd", "same"} and "![Δ mIoU per recipe" in md
    assert drawn["kd"]["delta_ci"] == kd["delta_ci"] and len(drawn["kd"]["seed_deltas"]) == 2
    assert drawn["same"]["seed_deltas"] == [0.0, 0.0]

    # a second call trains nothing: the finished runs are collected as they are; a run
    # without per-image counts (one from before them) has its best.pt scored, and kept
    best = out / "runs" / "kd" / "seed1" / "checkpoints" / "best.pt"
    stamp = best.stat().st_mtime_ns
    kept = out / "runs" / "kd" / "seed1" / "val" / "per_image.npz"
    kept.unlink()
    said = []
    run_study(study, collect_only=True, show=False, log=said.append)
    assert best.stat().st_mtime_ns == stamp
    assert [m for m in said if "scoring checkpoints/best.pt" in m] == [
        (f"{kept.parents[1]}: no val/per_image.npz (a run from before per-image scores were "
         "kept): scoring checkpoints/best.pt on its val split 'val' now")]
    assert kept.is_file()
    again = json.loads((out / "comparison.json").read_text())
    assert {a["recipe"]: a["delta_ci"] for a in again["recipes"] if "delta_ci" in a} == \
        {a["recipe"]: a["delta_ci"] for a in res["recipes"] if "delta_ci" in a}
    # runs scored on other images are not paired: refused, naming both runs
    c = ImageCounts.load(kept)
    ImageCounts(tuple(f"other_{n}" for n in c.images), c.intersection, c.union,
                c.class_names, meta=c.meta).save(kept)
    with pytest.raises(InputError, match=rf"{out / 'runs' / 'no-kd' / 'seed0'} and "
                                         rf"{kept.parents[1]} were not scored on the same"):
        run_study(study, collect_only=True, show=False, log=lambda *_: None)
    c.save(kept)
    # another config for the same run dir is refused, not silently mixed
    with pytest.raises(ConfigError, match="another config"):
        run_study(study, ["train.lr=0.01"], collect_only=True, show=False, log=lambda *_: None)

    # the CLI, collecting finished run dirs by glob as a recipe
    spec = tmp_path / "study.yaml"
    spec.write_text(
        f"name: collected\noutput_dir: {tmp_path / 'studies'}\nbaseline: base\n"
        f"latency: {{warmup: 1, repeats: 2}}\nrecipes:\n"
        f"  - {{name: base, runs: ['{out}/runs/no-kd/seed*']}}\n"
        f"  - {{name: kd, runs: ['{out}/runs/kd/seed*']}}\n")
    res = runner.invoke(app, ["compare", "-c", str(spec), "--collect-only", "-q"])
    assert res.exit_code == 0, res.output
    assert "| kd | 2 |" in res.output
    assert "(collected)" in (tmp_path / "studies" / "collected" / "comparison.md").read_text()


REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                 if "recipes" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_studies_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipe paths in a study are relative to the repository root
    study = load_study(path)
    for recipe in study.recipes:
        if recipe.config:
            load_config(recipe.config, [*study.overrides, *recipe.overrides])
