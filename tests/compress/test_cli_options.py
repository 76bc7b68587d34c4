"""One name per concept across commands: the dataset layout is ``--data-kind`` in every
command (``compress eval`` still takes its old ``--kind``)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from compress.models import create_model, save_checkpoint
from segcompress.cli import app
from tests.conftest import tiny_spec

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    spec = tiny_spec()
    return save_checkpoint(tmp_path_factory.mktemp("opts") / "m.pt", create_model(spec), spec,
                           metrics=None, epoch=0)


@pytest.mark.parametrize("flag", ["--data-kind", "--kind"])
def test_eval_takes_data_kind_and_its_old_name(ckpt, tmp_path, flag):
    out = tmp_path / flag.strip("-")
    res = runner.invoke(app, ["eval", str(ckpt), flag, "synthetic", "--data", "unused",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert 0 <= json.loads((out / "eval.json").read_text())["miou"] <= 1


@pytest.mark.parametrize("command", [["eval", "x.pt", "--data", "d"],
                                     ["prune", "x.pt", "--out", "o.pt", "--macs-ratio", "0.5"],
                                     ["export", "x.pt", "--out", "o", "--int8"]])
def test_a_bad_data_kind_is_refused_naming_the_option(command):
    res = runner.invoke(app, [*command, "--data-kind", "coco"])
    assert res.exit_code == 2
    assert "--data-kind" in res.output and "coco" in res.output
