import pickle

import pytest
import torch

from compress.io import UnsafeFileError
from compress.models import (
    ModelError,
    create_model,
    forward_with_features,
    load_model,
    local_weights_path,
    make_spec,
    read_checkpoint,
    save_checkpoint,
)
from tests.conftest import tiny_spec


@pytest.mark.parametrize("arch", ["Unet", "FPN", "DeepLabV3Plus", "Linknet"])
def test_smp_architectures_map_images_to_logits(arch):
    spec = tiny_spec(classes=4, arch=arch, decoder_channels=None)
    model = create_model(spec).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 4, 64, 64)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ModelError, match="valid: .*Unet"):
        create_model(tiny_spec(arch="NoSuchNet"))


def test_custom_factory(tmp_path):
    spec = make_spec(arch="custom", encoder="none", classes=3,
                     factory="tests.compress.custom_teacher:build")
    with pytest.raises(ModelError, match="--trust-factory tests.compress.custom_teacher:build"):
        create_model(spec)  # named only by the spec: not trusted
    model = create_model(spec, trusted={"tests.compress.custom_teacher:build"})
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ModelError, match="package.module:function"):
        create_model(make_spec(arch="x", encoder="none", classes=3, factory="nocolon"))


def test_feature_taps_have_expected_strides():
    model = create_model(tiny_spec()).eval()
    levels = ["stride4", "stride8", "stride16", "stride32", "decoder"]
    with torch.no_grad():
        logits, feats = forward_with_features(model, torch.randn(1, 3, 64, 64), levels)
        plain = model(torch.randn(1, 3, 64, 64) * 0)
    assert logits.shape == plain.shape
    sizes = {k: tuple(v.shape[-2:]) for k, v in feats.items()}
    assert sizes == {"stride4": (16, 16), "stride8": (8, 8), "stride16": (4, 4),
                     "stride32": (2, 2), "decoder": (64, 64)}


def test_local_imagenet_weights_load_by_order():
    spec = tiny_spec(encoder="tu-efficientnet_lite0")
    model = create_model(spec, encoder_weights="local")
    src = torch.load(local_weights_path("tu-efficientnet_lite0"), weights_only=True)
    assert torch.equal(model.encoder.model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(model.encoder.model.blocks[1][0].conv_pw.weight,
                       src["_blocks.1._expand_conv.weight"])


def test_local_weights_shape_mismatch_is_clear(tmp_path):
    src = torch.load(local_weights_path("tu-efficientnet_lite0"), weights_only=True)
    src["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    p = tmp_path / "bad.pth"
    torch.save(src, p)
    with pytest.raises(ModelError, match=r"_conv_stem.weight has shape \(8, 3, 3, 3\)"):
        create_model(tiny_spec(), encoder_weights=str(p))
    with pytest.raises(ModelError, match="tensors"):  # lite0 weights into lite2
        create_model(tiny_spec(encoder="tu-efficientnet_lite2"),
                     encoder_weights=str(local_weights_path("tu-efficientnet_lite0")))


def test_checkpoint_round_trip(tmp_path):
    spec = tiny_spec(class_names=["a", "b", "c", "d", "e"], ignore_index=11)
    model = create_model(spec).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, spec, metrics={"miou": 0.5}, epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["spec"]["class_names"] == ["a", "b", "c", "d", "e"]
    assert raw["epoch"] == 3
    loaded = load_model(path)
    assert not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_plain_state_dict_needs_architecture(tmp_path):
    spec = tiny_spec()
    model = create_model(spec)
    p = tmp_path / "plain.pth"
    torch.save(model.state_dict(), p)
    with pytest.raises(ModelError, match="--arch"):
        load_model(p)
    loaded = load_model(p, spec=spec)
    assert loaded(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(p, spec=tiny_spec(classes=7))


class _Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_pickle_payload_refused_without_running(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"spec": None, "state_dict": _Payload()}, f)
    with pytest.raises(UnsafeFileError, match="refused"):
        read_checkpoint(p)
    assert "PAYLOAD RAN" not in capsys.readouterr().out


def test_truncated_checkpoint_refused(tiny_checkpoint):
    data = tiny_checkpoint.read_bytes()
    tiny_checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError, match=str(tiny_checkpoint.name)):
        load_model(tiny_checkpoint)


def test_pack_half_checkpoint(tmp_path):
    """`compress pack`: float16 weights, no optimizer state, same predictions to fp16
    precision; refuses to overwrite and refuses weights float16 cannot hold."""
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.models import pack_checkpoint

    spec = tiny_spec(class_names=["a", "b", "c", "d", "e"], ignore_index=11)
    model = create_model(spec).eval()
    src = save_checkpoint(tmp_path / "m.pt", model, spec, metrics={"miou": 0.5}, epoch=3,
                          optimizer={"junk": torch.zeros(1000)})
    out = tmp_path / "zoo" / "m16.pt"
    res = CliRunner().invoke(app, ["pack", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "sha256" in res.output
    raw = torch.load(out, weights_only=True)
    assert "optimizer" not in raw and raw["metrics"] == {"miou": 0.5} and raw["epoch"] == 3
    floats = [v for v in raw["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert out.stat().st_size < 0.6 * src.stat().st_size
    packed = load_model(out)
    assert next(packed.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), atol=5e-2, rtol=5e-2)
    from compress.outdir import OutputError

    with pytest.raises(OutputError, match="exists"):  # compress.outdir.new_output
        pack_checkpoint(src, out)
    big = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in big.items() if v.is_floating_point())
    big[key].fill_(1e6)
    bad = tmp_path / "big.pt"
    torch.save({"format": "segcompress-checkpoint/1", "spec": spec.to_dict(), "state_dict": big},
               bad)
    with pytest.raises(ModelError, match="float16"):
        pack_checkpoint(bad, tmp_path / "big16.pt")
