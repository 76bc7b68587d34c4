"""compress prune: Torch-Pruning to a MAC target, the pruned widths in the spec, reloaded
with weights_only=True, refused when crafted, and usable by distill and export."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.models import ModelError, create_model, load_model, save_checkpoint, validate_spec
from compress.prune import count_gmacs, prune_checkpoint
from tests.conftest import tiny_config, tiny_spec

runner = CliRunner()
WIDE = [64, 32, 32, 16, 16]  # a decoder wide enough for channels rounded to multiples of 8


@pytest.fixture(scope="module")
def unpruned(tmp_path_factory):
    torch.manual_seed(0)
    spec = tiny_spec(decoder_channels=WIDE)
    path = tmp_path_factory.mktemp("prune") / "tiny.pt"
    return save_checkpoint(path, create_model(spec), spec, metrics=None, epoch=0)


@pytest.fixture(scope="module")
def pruned(unpruned):
    out = unpruned.parent / "half.pt"
    return prune_checkpoint(unpruned, out, macs_ratio=0.5, steps=3)


def test_pruning_hits_the_target_and_keeps_the_output_shape(unpruned, pruned):
    model, spec = load_model(pruned["out"], return_spec=True)
    base = load_model(unpruned)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == base(x).shape == (2, 5, 64, 64)
    gmacs = count_gmacs(model, (64, 64))
    assert abs(gmacs - 0.5 * count_gmacs(base, (64, 64))) <= 0.05 * pruned["target_gmacs"]
    assert abs(gmacs - pruned["gmacs_after"]) < 1e-9
    shapes = spec.pruned_shapes
    assert shapes and all(s[0] % 8 == 0 for k, s in shapes.items() if k.endswith("conv.weight"))
    assert shapes.get("segmentation_head.0.weight", [5])[0] == 5  # its inputs thin, not the classes
    assert "segmentation_head.0.bias" not in shapes


def test_pruned_checkpoint_reloads_bit_exactly_with_weights_only(pruned):
    raw = torch.load(pruned["out"], weights_only=True)  # no pickled module in the file
    model = load_model(pruned["out"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["state_dict"][k]), k
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), load_model(pruned["out"])(x))
    assert raw["pruning"]["importance"] == "magnitude"


@pytest.mark.parametrize("shapes, match", [
    ("nope", "pruned_shapes' must be a mapping"),
    ({"encoder.model.conv_stem.weight": [8, 3, "3", 3]}, "1 to 5 positive integers"),
    ({"encoder.model.conv_stem.weight": [0, 3, 3, 3]}, "1 to 5 positive integers"),
    ({"import os": [8]}, "dotted tensor names"),
    ({"no.such.weight": [8]}, "does not have"),
    ({"encoder.model.conv_stem.weight": [64, 3, 3, 3]}, "not a pruned shape"),
    ({"encoder.model.conv_stem.weight": [8, 3, 3]}, "not a pruned shape"),
    ({"encoder.model.conv_stem.weight": [8, 3, 3, 3]}, "do not fit together"),
])
def test_crafted_pruned_shapes_are_refused_in_one_line(tmp_path, pruned, shapes, match):
    raw = torch.load(pruned["out"], weights_only=True)
    raw["spec"]["pruned_shapes"] = shapes
    path = tmp_path / "crafted.pt"
    torch.save(raw, path)
    with pytest.raises(ModelError, match=match) as e:
        load_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_validate_spec_accepts_no_pruned_shapes():
    spec = tiny_spec()
    assert validate_spec({**spec.to_dict(), "pruned_shapes": None})
    assert validate_spec(spec.to_dict())


@pytest.mark.slow  # Taylor importance over training batches: ~30 s
def test_taylor_importance_on_training_batches(unpruned, tmp_path):
    r = prune_checkpoint(unpruned, tmp_path / "taylor.pt", macs_ratio=0.6, steps=2,
                         importance="taylor", data_kind="synthetic", batches=1, batch_size=2)
    assert abs(r["gmacs_after"] - r["target_gmacs"]) <= 0.05 * r["target_gmacs"]
    assert torch.load(tmp_path / "taylor.pt", weights_only=True)["pruning"]["importance"] == "taylor"


def test_cli_prune_needs_one_target_and_reports(unpruned, tmp_path):
    res = runner.invoke(app, ["prune", str(unpruned), "--out", str(tmp_path / "x.pt")])
    assert res.exit_code != 0 and "--macs-ratio or --target-gmacs" in str(res.exception)
    res = runner.invoke(app, ["prune", str(unpruned), "--out", str(tmp_path / "y.pt"),
                              "--target-gmacs", "0.05", "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "GMACs" in res.output and (tmp_path / "y.pt").is_file()


def test_pruned_model_exports_and_verifies(pruned, tmp_path):
    from deploy.pipeline import ExportConfig, export_checkpoint

    manifest = export_checkpoint(pruned["out"], tmp_path / "exp",
                                 ExportConfig(synthetic_val_length=4))
    onnx_entry = manifest["artifacts"][0]
    assert onnx_entry["verification"]["agreement"] >= 0.999
    assert manifest["spec"]["pruned_shapes"]


def test_distill_fine_tunes_a_pruned_student(pruned, unpruned, tmp_path):
    from compress.train import fit

    cfg = tiny_config(tmp_path, [f"model.init_from={pruned['out']}", "train.epochs=1",
                                 f"teacher.checkpoint={unpruned}", "teacher.allow_weak=true",
                                 "kd.cwd.weight=1.0"])
    run = fit(cfg, show_progress=False).run_dir
    _, spec = load_model(run / "checkpoints" / "best.pt", return_spec=True)
    assert spec.pruned_shapes == load_model(pruned["out"], return_spec=True)[1].pruned_shapes
    assert "student initialised from" in (run / "train.log").read_text()


@pytest.mark.slow  # repeated pruning passes: ~20 s
def test_a_target_inside_a_rounding_jump_is_reached_by_the_refinement():
    """Rounding to multiples of 8 makes this tiny model jump from its full 0.076 GMACs to
    0.044 at the smallest uniform ratio; 75 % lies in that jump, so one ratio for every
    layer misses by 23 % and only the per-layer refinement lands within 5 %."""
    from compress.prune import prune_model

    torch.manual_seed(0)
    spec = tiny_spec(decoder_channels=WIDE)
    model = create_model(spec).eval()
    x = torch.zeros(1, 3, 64, 64)
    full = count_gmacs(model, (64, 64)) * 1e9
    pruned, res = prune_model(model, x, target_macs=0.75 * full, steps=1, round_to=8,
                              classes=spec.classes)
    assert res.layers_at_high > 0 and res.ratio_high is not None
    assert abs(res.macs_after - res.target_macs) <= 0.05 * res.target_macs
    assert pruned(x).shape == model(x).shape
