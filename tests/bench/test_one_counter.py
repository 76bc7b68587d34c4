"""One MAC counter: ``bench flops``, the comparison study's table and ``compress prune``'s
record give the same GMACs for the same model, and each states what GMACs means."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from bench.cli import app as bench_app
from bench.study import count_params_gmacs
from compress.macs import GMACS_DEFINITION, count_flops
from compress.models import create_model, load_model, save_checkpoint
from compress.prune import count_gmacs, prune_checkpoint
from tests.conftest import tiny_spec

runner = CliRunner()


def test_flops_study_and_prune_agree(tmp_path):
    torch.manual_seed(0)
    spec = tiny_spec(decoder_channels=[32, 16, 16, 8, 8])
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(spec), spec, metrics=None, epoch=0)

    out = tmp_path / "flops.json"
    r = runner.invoke(bench_app, ["flops", str(ckpt), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert GMACS_DEFINITION in r.output
    flops = json.loads(out.read_text())

    model = load_model(ckpt)
    params, study_gmacs = count_params_gmacs(model, (64, 64))
    pruned = prune_checkpoint(ckpt, tmp_path / "p.pt", macs_ratio=0.5, steps=1)

    assert flops["gmacs"] == study_gmacs == count_gmacs(model, (64, 64))
    assert pruned["gmacs_before"] == flops["gmacs"]
    assert params == flops["params"]["total"] == pruned["params_before"]
    # the pruned record's "after" is the same counter on the pruned model
    assert pruned["gmacs_after"] == count_gmacs(load_model(pruned["out"]), (64, 64))
    # every op counted, not the dense part alone
    assert flops["gmacs"] > flops["dense_gmacs"]


def test_counter_counts_every_op_by_hand():
    """A 1x1 conv (3->2, no bias) then ReLU at 4x4: 2*16*3 multiply-adds + 2*16 ReLUs."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1, bias=False), torch.nn.ReLU())
    r = count_flops(m, (4, 4))
    assert r.dense_macs == 96 and r.macs == 96 + 32
