"""The student zoo: every student builds, taps at its declared strides, rebuilds from its
checkpoint, and one student per head family exports to ONNX and verifies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compress.config import ConfigError, load_config
from compress.models import create_model, forward_with_features, load_model, save_checkpoint
from compress.zoo import (
    HEAD_ARCHS,
    STUDENTS,
    ZooError,
    declared_taps,
    get_student,
    student_names,
    student_spec,
)

SIZE = (64, 96)  # not square, so a swapped height/width shows


@pytest.mark.parametrize("name", student_names())
def test_student_builds_taps_and_matches_forward(name):
    spec = student_spec(name, 7, input_size=SIZE)
    model = create_model(spec).eval()
    x = torch.randn(2, 3, *SIZE)
    taps = declared_taps(spec)
    with torch.no_grad():
        y = model(x)
        y2, feats = forward_with_features(model, x, list(taps))
    assert y.shape == (2, 7, *SIZE)
    assert torch.equal(y, y2)
    assert set(feats) == set(taps)
    for level, stride in taps.items():
        assert tuple(feats[level].shape[-2:]) == (SIZE[0] // stride, SIZE[1] // stride), level


def test_local_weights_load_into_a_project_head():
    """lite0's offline ImageNet weights land in a zoo head's encoder (not random init)."""
    spec = student_spec("segformer-lite0", 5, input_size=SIZE)
    torch.manual_seed(0)
    random = create_model(spec, None)
    local = create_model(spec, get_student("segformer-lite0").weights)
    a = random.encoder.model.state_dict()
    b = local.encoder.model.state_dict()
    assert get_student("segformer-lite0").weights == "local"
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_encoder_width_without_weights_refuses_local():
    spec = student_spec("ppliteseg-lite0-e075", 5, input_size=SIZE)
    assert get_student("ppliteseg-lite0-e075").weights is None
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        create_model(spec, "local")


@pytest.mark.parametrize("name", ["ppliteseg-mnv4s-050", "segformer-efficientvit-b0"])
def test_zoo_checkpoint_rebuilds_with_load_model(tmp_path, name):
    spec = student_spec(name, 5, input_size=SIZE)
    model = create_model(spec).eval()
    path = save_checkpoint(tmp_path / "s.pt", model, spec)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["spec"]["arch"] == STUDENTS[name].arch
    loaded = load_model(path)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_recipe_key_selects_a_student():
    cfg = load_config(None, ["model.student=fpn-lite0"])
    assert cfg.model.arch == "FPN" and cfg.model.encoder == "tu-efficientnet_lite0"
    assert cfg.model.kwargs == {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}
    assert cfg.model.encoder_weights == "local"
    cfg = load_config(None, ["model.student=lraspp-mnv4s", "model.arch=Unet"])
    assert cfg.model.arch == "LRASPP"  # the student decides the architecture
    cfg = load_config(None, ["model.student=unet-lite0", "model.encoder_weights=null"])
    assert cfg.model.encoder_weights is None  # an explicit choice is kept


def test_unknown_student_names_the_key_and_the_zoo():
    with pytest.raises(ConfigError, match="unknown student 'nope'.*unet-lite0"):
        load_config(None, ["model.student=nope"])
    with pytest.raises(ZooError, match="fpn-lite0"):
        get_student("nope")


def test_unknown_head_kwargs_are_refused():
    spec = replace(student_spec("lraspp-mnv4s", 5), kwargs={"bogus": 1})
    with pytest.raises(ZooError, match="bogus"):
        create_model(spec)


# one student per head family in the default run; the rest are slow
FAMILY_PICKS = {"unet-lite0", "fpn-lite0", "deeplabv3plus-lite0", "linknet-lite0",
                "segformer-mnv4s", "lraspp-mnv4s", "ppliteseg-mnv4s-050"}


def _export_params():
    for name in student_names():
        marks = () if name in FAMILY_PICKS else (pytest.mark.slow,)
        yield pytest.param(name, marks=marks)


def test_every_family_has_a_default_export_test():
    assert {STUDENTS[n].arch for n in FAMILY_PICKS} == {STUDENTS[n].arch for n in STUDENTS}
    assert set(HEAD_ARCHS) <= {STUDENTS[n].arch for n in FAMILY_PICKS}


@pytest.mark.parametrize("name", list(_export_params()))
def test_student_exports_and_verifies(tmp_path, name):
    import numpy as np

    from deploy.backends.openvino import convert_to_openvino
    from deploy.export import export_onnx, export_spec, verify_onnx
    from deploy.runtime import load_runtime

    size = (64, 64)
    spec = student_spec(name, 5, input_size=size)
    model = create_model(spec).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx", spec, size=size)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((2, 3, *size)).astype(np.float32), None)]
    res = verify_onnx(onnx_path, model, batches, min_agreement=0.99)
    assert res["max_abs_diff"] < 1e-3
    xml = convert_to_openvino(onnx_path, tmp_path / "m.xml", export_spec(spec, size, False))
    rt = load_runtime(xml, precision="f32", threads=1)
    ref = load_runtime(onnx_path, threads=1).predict(batches[0][0])
    assert np.abs(rt.predict(batches[0][0]) - ref).max() < 1e-3
