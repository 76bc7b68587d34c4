"""ModelSpec: the typed model spec, a plain dict only in files; old checkpoints still load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from compress.models import create_model, load_model, read_checkpoint, save_checkpoint
from compress.spec import ModelError, ModelSpec
from tests.conftest import tiny_spec

# what make_spec wrote into every checkpoint before the spec was typed (keys and types)
OLD_SPEC = {
    "arch": "Unet", "encoder": "tu-efficientnet_lite0", "classes": 3,
    "class_names": ["road", "car", "sky"], "ignore_index": 255,
    "decoder_channels": [16, 16, 8, 8, 8], "factory": None, "kwargs": {},
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": [64, 64],
}
REQUIRED = ("arch", "encoder", "classes", "class_names", "ignore_index", "mean", "std",
            "input_size")


def _one_line_naming(e: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


def test_dict_round_trip_keeps_the_file_keys():
    spec = ModelSpec.from_dict(OLD_SPEC, "old.pt")
    assert spec.to_dict() == OLD_SPEC
    assert json.loads(json.dumps(spec.to_dict())) == OLD_SPEC
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert tiny_spec().to_dict().keys() == OLD_SPEC.keys()  # make_spec writes the same keys
    # the optional parts travel when set, and only then
    full = {**OLD_SPEC, "pruned_shapes": {"segmentation_head.0.weight": [3, 8, 3, 3]},
            "output": "argmax"}
    assert ModelSpec.from_dict(full).to_dict() == full
    assert ModelSpec.from_dict({**OLD_SPEC, "pruned_shapes": None}).to_dict() == OLD_SPEC


def test_fields_keep_the_dict_types():
    spec = ModelSpec.from_dict({**OLD_SPEC, "mean": (0.5, 0.5, 0.5), "input_size": (64, 96)})
    assert spec.mean == [0.5, 0.5, 0.5] and spec.input_size == [64, 96]  # lists, as in files
    assert spec.class_names == ["road", "car", "sky"]
    assert spec.output is None and spec.pruned_shapes is None


def test_optional_keys_may_be_absent():
    lean = {k: v for k, v in OLD_SPEC.items() if k in REQUIRED}
    spec = ModelSpec.from_dict(lean)
    assert spec.decoder_channels is None and spec.factory is None and spec.kwargs == {}


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_key_is_named_in_one_line(key):
    data = {k: v for k, v in OLD_SPEC.items() if k != key}
    with pytest.raises(ModelError) as e:
        ModelSpec.from_dict(data, "some/best.pt")
    _one_line_naming(e, "some/best.pt: ", f"model spec key {key!r} is missing")


def test_an_unknown_key_is_named_in_one_line():
    with pytest.raises(ModelError) as e:
        ModelSpec.from_dict({**OLD_SPEC, "colour": "red"}, "m.onnx")
    _one_line_naming(e, "m.onnx: ", "model spec key 'colour' is unknown")


@pytest.mark.parametrize("key, value, want", [
    ("classes", 0, "an integer >= 1"),
    ("classes", True, "an integer >= 1"),
    ("class_names", ["a"], "a list of 3 names"),
    ("std", [0.2, 0.0, 0.2], "3 positive numbers"),
    ("mean", [0.5, float("nan"), 0.5], "3 finite numbers"),
    ("input_size", [64], "two positive integers"),
    ("kwargs", [1], "a mapping"),
    ("output", "probabilities", "'logits', 'argmax' or null"),
    ("pruned_shapes", "nope", "pruned_shapes' must be a mapping"),
])
def test_a_malformed_key_is_named_in_one_line(key, value, want):
    with pytest.raises(ModelError) as e:
        ModelSpec.from_dict({**OLD_SPEC, key: value}, "x.pt")
    _one_line_naming(e, "x.pt: ", f"'{key}'", want)


def test_not_a_mapping_is_refused():
    with pytest.raises(ModelError, match="must be a mapping, not list"):
        ModelSpec.from_dict([1, 2], "x.pt")


def test_frozen_and_replace_checks_again():
    spec = tiny_spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.classes = 7
    wider = dataclasses.replace(spec, input_size=[96, 128])
    assert wider.input_size == [96, 128] and spec.input_size == [64, 64]
    with pytest.raises(ModelError, match="'classes'"):
        dataclasses.replace(spec, classes=0)


def test_caller_lists_are_not_shared():
    names = ["a", "b", "c"]
    spec = ModelSpec.from_dict({**OLD_SPEC, "class_names": names})
    names.append("d")
    assert spec.class_names == ["a", "b", "c"]
    out = spec.to_dict()
    out["mean"][0] = 9.0
    assert spec.mean[0] == 0.485


def test_create_model_takes_a_spec_not_a_dict():
    with pytest.raises(TypeError, match="ModelSpec"):
        create_model(OLD_SPEC)


def test_checkpoint_holds_the_plain_dict(tmp_path):
    spec = ModelSpec.from_dict(OLD_SPEC)
    path = save_checkpoint(tmp_path / "m.pt", create_model(spec), spec, epoch=0)
    raw = torch.load(path, weights_only=True)
    assert raw["spec"] == OLD_SPEC and type(raw["spec"]) is dict
    assert read_checkpoint(path)["spec"] == spec


def test_old_checkpoint_with_a_dict_spec_loads(tmp_path):
    """A checkpoint written before ModelSpec: ``torch.save`` of a dict spec."""
    model = create_model(ModelSpec.from_dict(OLD_SPEC)).eval()
    old = tmp_path / "old.pt"
    torch.save({"format": "segcompress-checkpoint/1", "spec": dict(OLD_SPEC),
                "state_dict": model.state_dict(), "metrics": None, "epoch": 3}, old)
    loaded, spec = load_model(old, return_spec=True)
    assert isinstance(spec, ModelSpec) and spec.to_dict() == OLD_SPEC
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_bad_spec_in_a_checkpoint_names_file_and_key(tmp_path):
    model = create_model(ModelSpec.from_dict(OLD_SPEC))
    bad = tmp_path / "bad.pt"
    torch.save({"format": "segcompress-checkpoint/1", "spec": {**OLD_SPEC, "extra": 1},
                "state_dict": model.state_dict()}, bad)
    with pytest.raises(ModelError) as e:
        load_model(bad)
    _one_line_naming(e, str(bad), "'extra'")


def test_tasks_are_typed_once_and_written_back_as_mappings():
    """Issue 21: ``ModelSpec.tasks`` is parsed once into ``TaskSpec`` s; files keep the
    list of mappings, and a bad task is refused when the spec is made."""
    from compress.tasks import TaskSpec

    depth = {"name": "depth", "kind": "depth", "unit": "m", "min_depth": 0.5,
             "max_depth": 30.0, "channels": 16}
    spec = ModelSpec.from_dict({**OLD_SPEC, "tasks": [depth]})
    assert spec.tasks == (TaskSpec(**depth),)
    assert spec.to_dict()["tasks"] == [depth]
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert dataclasses.replace(spec, tasks=spec.tasks) == spec  # already typed: kept
    assert "tasks" not in ModelSpec.from_dict(OLD_SPEC).to_dict()
    with pytest.raises(ModelError, match="tasks\\[0\\].channels"):
        dataclasses.replace(spec, tasks=[{**depth, "channels": 0}])
