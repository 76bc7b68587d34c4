"""Training a multi-task student (segmentation + depth): both tasks' metrics every epoch,
the depth loss only where a sample has depth, the mixture's ratio, an exact resume with
the learned task balance, and recipes refused in one line when they cannot work."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from compress.config import ConfigError
from compress.data import EpochSampler, build_train_set, drawn_mixture
from compress.depth_losses import silog_loss
from compress.losses import Distiller, TaskLoss
from compress.train import fit
from tests.conftest import interrupted_then_resumed, tiny_config

TASKS = "model.tasks=[{name: depth, kind: depth, min_depth: 0.5, max_depth: 30.0, channels: 8}]"


def mt_config(tmp_path, extra=()):
    """The tiny synthetic recipe as a multi-task student: depth on the main split
    (dense, scored on the val split), weights 0.5 / 0.5."""
    return tiny_config(tmp_path, [TASKS, "data.depth=dense",
                                  "multitask.weights={seg: 0.5, depth: 0.5}", *extra])


def test_multitask_run_writes_seg_and_depth_metrics_every_epoch(tmp_path, monkeypatch):
    def second_pass(*a, **k):
        raise AssertionError("depth on the val split is scored in the segmentation pass")

    monkeypatch.setattr("compress.train.evaluate_depth", second_pass)
    cfg = mt_config(tmp_path, ["train.vis_every=2"])
    result = fit(cfg, show_progress=False)
    run = result.run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 <= float(r["val_miou"]) <= 1
        assert float(r["val_depth_rmse"]) > 0 and float(r["val_depth_abs_rel"]) > 0
        assert 0 <= float(r["val_depth_delta1"]) <= 1
        assert {"train_seg", "train_depth", "train_task", "train_loss"} <= set(r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_val_depth"]["rmse"] == float(rows[-1]["val_depth_rmse"])
    assert summary["spec"]["tasks"][0]["name"] == "depth"
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["spec"]["tasks"][0]["max_depth"] == 30.0
    assert best["metrics"]["depth"]["rmse"] > 0  # best.pt is still chosen by val mIoU
    assert (run / "visualizations" / "epoch_002_depth.png").is_file()


def test_depth_loss_gives_no_gradient_to_samples_without_depth():
    crit = Distiller(task=TaskLoss(), task_weights={"seg": 0.5, "depth": 0.5},
                     depth_loss=silog_loss)
    seg = torch.randn(2, 5, 8, 8, requires_grad=True)
    depth = torch.full((2, 8, 8), 5.0, requires_grad=True)
    target = torch.randint(0, 5, (2, 8, 8))
    target[1] = 255  # sample 1: no mask either (a depth-only frame without its depth)
    gt = torch.zeros(2, 8, 8)
    gt[0, ::2] = 4.0  # sample 0: sparse depth; sample 1: none (0 = no value)
    terms = crit({"seg": seg, "depth": depth}, target, depth=gt)
    assert set(terms) >= {"loss", "seg", "depth", "task"}
    terms["loss"].backward()
    assert torch.equal(depth.grad[1], torch.zeros(8, 8))
    assert torch.equal(depth.grad[0, 1::2], torch.zeros(4, 8))  # unmeasured rows
    assert depth.grad[0, ::2].abs().sum() > 0
    assert torch.equal(seg.grad[1], torch.zeros(5, 8, 8))
    expected = 0.5 * terms["seg"] + 0.5 * silog_loss(depth.detach(), gt)
    assert torch.allclose(terms["loss"].detach(), expected.detach())


def test_uncertainty_balance_is_logged_and_trained():
    crit = Distiller(task=TaskLoss(), task_weights={"seg": 0.5, "depth": 0.5},
                     balance="uncertainty", depth_loss=silog_loss)
    assert [n for n, _ in crit.named_parameters()] == ["balance.log_vars"]
    out = {"seg": torch.randn(1, 5, 4, 4), "depth": torch.full((1, 4, 4), 3.0)}
    terms = crit(out, torch.zeros(1, 4, 4, dtype=torch.long), depth=torch.full((1, 4, 4), 2.0))
    assert terms["w_seg"].item() == pytest.approx(0.5) and "w_depth" in terms
    terms["loss"].backward()
    assert crit.balance.log_vars.grad is not None


def test_mixture_draws_the_requested_ratio(tmp_path):
    depth_val = "data.depth_val={kind: synthetic, split: val, depth: dense}"
    extra = ("data.extra_train=[{kind: synthetic, length: 40, seed: 9, depth: lidar, "
             "masks: false, weight: 3.0}]")
    cfg = tiny_config(tmp_path, [TASKS, depth_val, extra])
    train_set = build_train_set(cfg.data, [0.5] * 3, [0.25] * 3, 255, with_depth=True)
    sampler = EpochSampler(len(train_set), 0, train_set.sample_weights(), 4000)
    drawn = drawn_mixture(train_set, sampler)
    assert drawn["drawn_0"] + drawn["drawn_1"] == 4000
    assert drawn["drawn_1"] / 4000 == pytest.approx(0.75, abs=0.03)  # 3 : 1
    depth_item, seg_item = train_set[len(train_set) - 1], train_set[0]
    assert (depth_item["mask"] == 255).all() and (depth_item["depth"] > 0).any()
    assert (seg_item["depth"] == 0).all()  # the seg source carries no depth: no value


def test_resume_continues_exactly_with_the_task_balance(tmp_path):
    extra = ["train.epochs=3", "multitask.balance=uncertainty", "train.lr=0.01"]
    full = fit(mt_config(tmp_path / "a", extra), show_progress=False).run_dir
    cfg = mt_config(tmp_path / "b", extra)
    run_b = interrupted_then_resumed(cfg, tmp_path / "b" / "runs" / "tiny")
    a, b = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (full, run_b))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    log_vars = a["distiller_state"]["balance.log_vars"]
    assert torch.equal(log_vars, b["distiller_state"]["balance.log_vars"])
    assert not torch.equal(log_vars, -torch.log(torch.tensor([0.5, 0.5])))  # it trained
    drop = {"epoch_seconds", "step_ms_median"}
    ra, rb = (list(csv.DictReader((r / "metrics.csv").open())) for r in (full, run_b))
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rb]
    assert "train_w_depth" in ra[0]


@pytest.mark.parametrize("overrides, match", [
    (["multitask.weights={seg: 0.5, dpth: 0.5}"], r"multitask\.weights names.*one weight"),
    (["multitask.weights={seg: 0.5}"], r"multitask\.weights names"),
    (["kd.feature.weight=1"], "feature taps"),
    (["quant.qat=true"], "quant.qat"),
    (["data.depth=none"], "nothing scores depth"),
    (["multitask.weights={seg: 0, depth: 1}", "kd.response.weight=1"], "seg is 0"),
    (["multitask.weights={seg: -1, depth: 1}"], ">= 0"),
])
def test_bad_multitask_recipes_are_refused(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        mt_config(tmp_path, overrides)


def test_multitask_keys_without_tasks_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.tasks is empty"):
        tiny_config(tmp_path, ["multitask.weights={seg: 1.0}"])
    with pytest.raises(ConfigError, match="one depth task"):
        tiny_config(tmp_path, ["model.tasks=[{name: a}, {name: b}]", "data.depth=dense"])


def test_compare_shows_depth_columns_only_when_runs_have_depth():
    from bench.study import BOOTSTRAP, comparison_csv, comparison_markdown

    def res(depth):
        run = {"recipe": "mt", "seed": 0, "miou": 0.5, "params": 1000, "gmacs": 0.1,
               "train_seconds": 1.0, "epochs": 2, "run_dir": "r", "trained_here": True,
               "best_epoch": 2, "per_class_iou": {}, "depth_rmse": depth,
               "depth_abs_rel": depth and 0.1, "depth_delta1": depth and 0.9}
        agg = {"recipe": "mt", "seeds": 1, "miou_mean": 0.5, "miou_std": None, "miou_min": 0.5,
               "miou_max": 0.5, "per_class_iou": {}, "train_seconds_mean": 1.0,
               "params": 1000, "gmacs": 0.1}
        if depth:
            agg.update(depth_rmse_mean=depth, depth_rmse_std=None, depth_abs_rel_mean=0.1,
                       depth_delta1_mean=0.9)
        return {"study": "s", "baseline": "mt", "recipes": [agg], "runs": [run],
                "missing": [], "skipped": [], "latency": {"enabled": False, "threads": 1},
                "bootstrap": BOOTSTRAP,
                "hardware": {"summary": "cpu", "packages": {}, "python": "3"}}

    md, table = comparison_markdown(res(2.5)), comparison_csv(res(2.5))
    assert "## Depth" in md and "| mt | 1 | 2.500 | 0.100 | 90.00 |" in md
    assert "depth_rmse" in table.splitlines()[0] and "2.5" in table.splitlines()[1]
    assert "Depth" not in comparison_markdown(res(None))
    assert "depth_rmse" not in comparison_csv(res(None))


def test_eval_of_a_multitask_checkpoint_scores_depth_when_the_split_has_it(tmp_path):
    from dataclasses import replace

    from compress.evaluate import evaluate_checkpoint, format_table
    from compress.models import create_model, save_checkpoint
    from tests.conftest import tiny_spec

    spec = replace(tiny_spec(synthetic_names=True),
                   tasks=[{"name": "depth", "max_depth": 30.0, "channels": 8}])
    ckpt = save_checkpoint(tmp_path / "mt.pt", create_model(spec), spec, metrics=None, epoch=0)
    res = evaluate_checkpoint(ckpt, tmp_path, kind="synthetic", out=tmp_path / "ev")
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["depth"]["rmse"] > 0 and saved["depth"]["targets"] == "dense"
    assert 0 <= saved["miou"] <= 1 and "depth RMSE" in format_table(res)
    res = evaluate_checkpoint(ckpt, tmp_path, kind="synthetic", depth="none",
                              out=tmp_path / "ev2")
    assert "depth" not in res


def test_one_pass_scores_both_tasks_like_two_passes():
    """``evaluate(..., depth=task)`` forwards each image once and gives the same
    segmentation scores and depth metrics as the two separate passes."""
    from dataclasses import replace

    from compress.data import collate, split_images
    from compress.evaluate import evaluate, evaluate_depth
    from compress.models import create_model
    from compress.multitask import depth_task
    from tests.conftest import tiny_spec

    spec = replace(tiny_spec(synthetic_names=True),
                   tasks=[{"name": "depth", "max_depth": 30.0, "channels": 8}])
    torch.manual_seed(0)
    model = create_model(spec).eval()
    ds = split_images("synthetic", None, "val", size=tuple(spec.input_size), mean=spec.mean,
                      std=spec.std, ignore_index=spec.ignore_index, count=6, depth="dense")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    seen = []

    def predict(x):
        seen.append(len(x))
        return model(x)

    one, conf_one = evaluate(predict, loader, spec.class_names, spec.ignore_index,
                             depth=depth_task(spec))
    assert sum(seen) == len(ds) == 6  # one forward per image
    two, conf_two = evaluate(model, loader, spec.class_names, spec.ignore_index)
    assert torch.equal(conf_one, conf_two) and one["miou"] == two["miou"]
    assert one["depth"] == pytest.approx(evaluate_depth(model, loader, "depth",
                                                        max_depth=30.0))
