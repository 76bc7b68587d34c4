"""Multi-task models: a head per extra task on the features the segmentation classifier
reads, a dict of named outputs, deepcopy-safe, state_dict round trip, ONNX with two named
outputs that ONNX Runtime reproduces, and task specs refused in one line when bent."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from compress.models import create_model, load_model, save_checkpoint
from compress.multitask import MultiTaskModel, attach_tasks, parse_tasks, seg_logits, task_names
from compress.zoo import student_spec
from tests.conftest import tiny_spec

DEPTH = [{"name": "depth", "kind": "depth", "min_depth": 1.0, "max_depth": 30.0,
          "channels": 8}]


def _model(spec):
    torch.manual_seed(0)
    return create_model(spec).eval()  # create_model attaches the spec's task heads


@pytest.mark.parametrize("spec", [replace(tiny_spec(), tasks=DEPTH),
                                  replace(student_spec("segformer-lite0", 5, input_size=(64, 64)),
                                          tasks=DEPTH),
                                  replace(student_spec("lraspp-lite0", 5, input_size=(64, 64)),
                                          tasks=DEPTH)],
                         ids=["smp-unet", "segformer", "lraspp"])
def test_forward_gives_named_outputs_and_keeps_the_logits(spec):
    model = _model(spec)
    assert isinstance(model, MultiTaskModel)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        plain = model.base(x)
    assert list(out) == ["seg", "depth"] == task_names(spec)
    assert out["seg"].shape == (2, 5, 64, 64) and out["depth"].shape == (2, 64, 64)
    assert torch.equal(out["seg"], plain)  # the heads read features, never change logits
    assert 1.0 <= out["depth"].min() and out["depth"].max() <= 30.0
    assert torch.equal(seg_logits(out), out["seg"]) and torch.equal(seg_logits(plain), plain)


def test_single_task_spec_is_unchanged():
    spec = tiny_spec()
    model = create_model(spec)
    assert not isinstance(model, MultiTaskModel) and task_names(spec) == ["logits"]
    assert attach_tasks(model, spec) is model and "tasks" not in spec.to_dict()


def test_multitask_checkpoint_round_trip(tmp_path):
    spec = replace(tiny_spec(), tasks=DEPTH)
    model = _model(spec)
    path = save_checkpoint(tmp_path / "mt.pt", model, spec, metrics=None, epoch=0)
    back, back_spec = load_model(path, return_spec=True)
    assert back_spec == spec and back_spec.to_dict()["tasks"][0]["max_depth"] == 30.0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), back.eval()(x)
    assert all(torch.equal(a[k], b[k]) for k in ("seg", "depth"))


def test_deepcopy_and_state_dict_round_trip():
    spec = replace(tiny_spec(), tasks=DEPTH)
    model = _model(spec)
    x = torch.randn(1, 3, 64, 64)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.heads["depth"].block[3].bias.add_(1.0)  # the copy's own head, own features
        a, b = model(x), clone(x)
    assert torch.equal(a["seg"], b["seg"]) and not torch.equal(a["depth"], b["depth"])
    fresh = create_model(spec).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        c = fresh(x)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert any(k.startswith("heads.depth.") for k in model.state_dict())


def test_onnx_export_has_two_named_outputs_that_onnxruntime_reproduces(tmp_path):
    import onnxruntime as ort

    spec = replace(tiny_spec(), tasks=DEPTH)
    model = _model(spec)
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "mt.onnx"
    torch.onnx.export(model, x, str(path), dynamo=False, input_names=["images"],
                      output_names=task_names(spec), opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["seg", "depth"]
    seg, depth = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(seg, ref["seg"].numpy(), atol=1e-4)
    np.testing.assert_allclose(depth, ref["depth"].numpy(), atol=1e-4)


@pytest.mark.parametrize("tasks,match", [
    ("depth", "a list of at most 4"),
    ([{"name": "depth", "colour": 1}], r"'tasks\[0\].colour' is unknown"),
    ([{"name": "seg"}], r"'tasks\[0\].name'"),
    ([{"name": "d", "kind": "normals"}], r"'tasks\[0\].kind': one of depth"),
    ([{"name": "d", "min_depth": 5, "max_depth": 1}], "0 < min_depth < max_depth"),
    ([{"name": "d", "channels": 0}], r"'tasks\[0\].channels'"),
    ([{"name": "d"}, {"name": "d"}], "task names repeat"),
])
def test_bent_task_specs_are_refused_naming_the_key(tasks, match):
    from compress.spec import ModelError, ModelSpec

    with pytest.raises(ModelError, match=match) as e:
        parse_tasks(tasks, "ckpt.pt")
    assert str(e.value).startswith("ckpt.pt: model spec key")
    with pytest.raises(ModelError, match=match):  # the way in from a file
        ModelSpec.from_dict({**tiny_spec().to_dict(), "tasks": tasks}, "ckpt.pt")


def test_fixed_balance_is_the_weighted_sum():
    from compress.multitask import TaskBalance

    b = TaskBalance({"seg": 0.5, "depth": 0.5})
    total = b({"seg": torch.tensor(2.0), "depth": torch.tensor(4.0)})
    assert total.item() == pytest.approx(3.0) and b.weights() == {"seg": 0.5, "depth": 0.5}
    assert not list(b.parameters())


def test_uncertainty_balance_starts_at_the_weights_and_learns_exp_s_equal_loss():
    from compress.multitask import TaskBalance

    b = TaskBalance({"seg": 0.5, "depth": 0.5}, mode="uncertainty")
    assert b.weights() == pytest.approx({"seg": 0.5, "depth": 0.5})
    losses = {"seg": torch.tensor(0.2), "depth": torch.tensor(5.0)}
    opt = torch.optim.SGD(b.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        b(losses).backward()
        opt.step()
    w = b.weights()  # optimum exp(-s) = 1 / L: the large depth loss is weighted down
    assert w["seg"] == pytest.approx(1 / 0.2, rel=0.02)
    assert w["depth"] == pytest.approx(1 / 5.0, rel=0.02)
    with pytest.raises(ValueError, match="'softmax'"):
        TaskBalance({"seg": 1.0}, mode="softmax")
