"""NaN and divergence: the run stops with one line naming epoch and step and the last good
checkpoint, and that checkpoint still loads and evaluates (``compress eval`` works on it).

Three ways in: the loss turns NaN (test hook ``SEGCOMPRESS_FAULT=loss@<n>:nan`` in the real
console entry), an absurd learning rate (``train.lr=1e6``), and weights that turn NaN
while the loss that produced them was still finite (caught before they are saved).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from compress.errors import TrainingDiverged
from compress.models import load_model
from compress.train import fit, step_hook
from tests.conftest import REPO, tiny_config
from tests.faults._helpers import error_line, record, run_console, run_inprocess

QUICK = str(REPO / "configs" / "quickstart.yaml")


def train_argv(out: Path, *extra: str) -> list[str]:
    return ["train", "-q", "-c", QUICK, f"output_dir={out}", "name=nan", "data.size=[64,64]",
            "data.synthetic_length=16", "data.synthetic_val_length=8", "data.batch_size=4",
            "model.decoder_channels=[16,16,8,8,8]", "train.epochs=3", "train.threads=1",
            "train.vis_every=0", "w_task=1", "kd.response.weight=0", *extra]


def _good_checkpoint(line: str) -> Path:
    m = re.search(r"last good checkpoint: (\S+)$", line)
    assert m, f"no last good checkpoint named: {line}"
    return Path(m.group(1))


def _eval_works(ckpt: Path, out: Path, console: bool) -> dict:
    argv = ["eval", str(ckpt), "--kind", "synthetic", "--data", "unused", "--out", str(out)]
    r = run_console("compress", argv) if console else run_inprocess("compress", argv)
    assert r.code == 0, r.text[-2000:]
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["miou"] <= 1
    return result


def test_nan_loss_in_the_console_run_names_epoch_step_and_good_checkpoint(tmp_path):
    """The 6th batch (epoch 2, after 5 optimizer steps) produces a NaN loss."""
    r = run_console("compress", train_argv(tmp_path / "runs"),
                    SEGCOMPRESS_FAULT="loss@6:nan")
    line = error_line(r)
    assert "loss became nan at epoch 2, step 5" in line, line
    # the fault poisons the weighted sum, not a term; the hint names the recipe's values
    assert "each named term is finite; try a lower train.lr (now 0.003)" in line, line
    good = _good_checkpoint(line)
    assert good.name == "last.pt" and good.is_file()
    assert torch.load(good, weights_only=True)["epoch"] == 1
    run = good.parent.parent
    assert not (run / "summary.json").exists(), "a diverged run must not look finished"
    assert not list(run.rglob("*.tmp"))
    assert load_model(good)(torch.randn(1, 3, 64, 64)).isfinite().all()
    _eval_works(good, tmp_path / "eval", console=True)
    record("divergence", "NaN loss (console)")


def test_absurd_learning_rate_stops_before_saving_garbage(tmp_path):
    """train.lr=1e6 blows the weights up inside epoch 1: the run stops naming epoch and
    step, says there is no checkpoint yet, and saved none (no inf weights as last.pt)."""
    r = run_inprocess("compress", train_argv(tmp_path / "runs", "train.lr=1e6"))
    line = error_line(r)
    assert re.search(r"at epoch 1, step \d+", line), line
    assert "no checkpoint yet" in line and ("NaN" in line or "nan" in line), line
    assert not list((tmp_path / "runs").rglob("*.pt"))
    record("divergence", "train.lr=1e6")


@pytest.mark.slow
def test_absurd_learning_rate_console(tmp_path):
    r = run_console("compress", train_argv(tmp_path / "runs", "train.lr=1e6"))
    line = error_line(r)
    assert re.search(r"at epoch 1, step \d+", line) and "no checkpoint yet" in line, line
    assert not list((tmp_path / "runs").rglob("*.pt"))
    record("divergence", "train.lr=1e6 (console)")


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward (as an overflow would)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_weights_turning_nan_under_a_finite_loss_are_never_checkpointed(tmp_path):
    """At the last step of epoch 2 the gradients turn NaN while the loss is finite (an
    overflow in backward): the weights become NaN. The end-of-epoch check refuses to save
    them and points at epoch 1's last.pt, which still loads and evaluates."""
    cfg = tiny_config(tmp_path, ["train.epochs=3", "train.threads=1"])

    def poison_gradients(loss, epoch, step):
        return _NaNGradient.apply(loss) if (epoch, step) == (1, 7) else loss

    with step_hook(poison_gradients), pytest.raises(TrainingDiverged) as e:
        fit(cfg, show_progress=False)
    msg = str(e.value)
    assert "weights became NaN/inf" in msg and "epoch 2, step 8" in msg, msg
    good = _good_checkpoint(msg)
    ckpt = torch.load(good, weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())
    _eval_works(good, tmp_path / "eval", console=False)
    record("divergence", "NaN weights under a finite loss")


def test_the_divergence_message_names_the_term_that_went_nan():
    """Issue 23: a NaN stop says which named term went non-finite and what to try."""
    from compress.config import TrainConfig
    from compress.losses import diverged_terms

    terms = {"loss": torch.tensor(float("nan")), "task_ce": torch.tensor(0.7),
             "kd_dist": torch.tensor(float("inf")), "kd_cwd": torch.tensor(float("nan"))}
    said = diverged_terms(terms, TrainConfig(lr=0.002, clip_grad=None))
    assert said == ("non-finite: kd_dist, kd_cwd; try a lower train.lr (now 0.002) or "
                    "train.clip_grad: 1.0 (now off)"), said
    said = diverged_terms({"loss": torch.tensor(float("nan")), "task_ce": torch.tensor(1.0)},
                          TrainConfig(lr=0.01, clip_grad=5.0))
    assert said.endswith("or a smaller train.clip_grad (now 5)"), said
