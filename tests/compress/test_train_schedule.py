"""The timm LR scheduler of a run: every param group follows it at its own base LR, its
state goes into ``last.pt`` and comes back on a resume unless today's recipe changed it.
(The factor per step is pinned in ``test_schedule.py``.)"""

from __future__ import annotations

import pytest
import torch

from compress.io import load_torch_file
from compress.schedule import create_lr_scheduler, restore_scheduler, set_step_lr
from compress.train import fit
from tests.conftest import tiny_config


def _optimizer(lrs=(0.01, 0.001)):
    return torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr}
                              for lr in lrs])


@pytest.mark.parametrize("schedule", ["cosine", "poly", "constant"])
def test_each_group_warms_up_and_decays_at_its_own_base_lr(schedule):
    opt = _optimizer()
    scheduler = create_lr_scheduler(opt, schedule, total_steps=20, warmup_steps=4)
    seen = []
    for step in range(21):
        set_step_lr(scheduler, step)
        seen.append([g["lr"] for g in opt.param_groups])
    assert seen[0] == pytest.approx([0.0025, 0.00025])  # first step at lr / warmup
    assert seen[3] == pytest.approx([0.01, 0.001]) == seen[4]
    for rest, encoder in seen:
        assert encoder == pytest.approx(rest * 0.1)
    assert seen[20] == (pytest.approx([0.01, 0.001]) if schedule == "constant" else [0.0, 0.0])


def test_state_restores_unless_the_recipe_changed_it():
    saved = {"step": 7, "total_steps": 20, "warmup_steps": 4,
             "state": create_lr_scheduler(_optimizer(), "cosine", 20, 4).state_dict()}
    assert restore_scheduler(create_lr_scheduler(_optimizer(), "cosine", 20, 4), saved)
    longer = create_lr_scheduler(_optimizer(), "cosine", 40, 4)  # train.epochs grew
    assert not restore_scheduler(longer, saved)
    assert longer.t_initial == 36  # today's recipe kept
    new_lr = create_lr_scheduler(_optimizer((0.02, 0.002)), "cosine", 20, 4)
    assert not restore_scheduler(new_lr, saved)
    assert new_lr.base_values == [0.02, 0.002]
    # a last.pt written before the schedules came from timm: rebuilt from the recipe
    assert not restore_scheduler(create_lr_scheduler(_optimizer(), "cosine", 20, 4),
                                 {"step": 7, "total_steps": 20, "warmup_steps": 4})


def test_last_pt_holds_the_scheduler_state(tmp_path):
    cfg = tiny_config(tmp_path, ["train.epochs=1", "train.max_steps_per_epoch=2",
                                 "train.warmup_epochs=0.5", "data.synthetic_length=8"])
    result = fit(cfg, show_progress=False)
    saved = load_torch_file(result.run_dir / "checkpoints" / "last.pt")["scheduler"]
    assert {k: saved[k] for k in ("step", "total_steps", "warmup_steps")} == {
        "step": 2, "total_steps": 2, "warmup_steps": 1}
    assert saved["state"]["t_initial"] == 1 and saved["state"]["warmup_t"] == 1
    assert result.best_checkpoint == result.run_dir / "checkpoints" / "best.pt"
    assert result.epochs == 1 and result.last_metrics["epoch"] == 1
    assert result.best_miou == pytest.approx(result.last_metrics["val_miou"], abs=1e-6)
