"""One class-map format by class names (hard maps, soft splits, ignore) for KD and
pseudo-labels, parsed by compress.classmap.parse_class_map."""

from __future__ import annotations

import pytest
import torch

from compress.classmap import kd_class_map, parse_class_map
from compress.config import load_config
from compress.losses import map_classes

T8 = ["Tree", "Rangeland", "Cropland", "Developed", "Road", "Bareland", "Water", "Background"]
S6 = ["Background", "Forest", "Grassland", "Cropland", "Settlement", "SemiNatural"]
BY_NAME = {"Tree": "Forest", "Rangeland": {"Grassland": 0.7, "SemiNatural": 0.3},
           "Cropland": "Cropland", "Developed": "Settlement", "Road": "Settlement",
           "Bareland": "SemiNatural", "Water": "Background", "Background": "Background"}
MATRIX = [[0, 1, 0, 0, 0, 0], [0, 0, 0.7, 0, 0, 0.3], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0],
          [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]


def test_names_give_the_same_matrix_as_the_old_format():
    by_name = kd_class_map(BY_NAME, T8, S6)
    assert torch.equal(by_name, kd_class_map(MATRIX, T8, S6))
    assert by_name[1, 2] == pytest.approx(0.7) and by_name[1, 5] == pytest.approx(0.3)


def test_a_recipe_takes_the_map_inline_or_as_a_file(tmp_path):
    cfg = load_config(None, [("kd.class_map={Tree: Forest, Rangeland: {Grassland: 0.7, "
                              "SemiNatural: 0.3}, Water: ignore}")])
    assert cfg.kd.class_map["Rangeland"] == {"Grassland": 0.7, "SemiNatural": 0.3}
    f = tmp_path / "map.yaml"
    f.write_text("classes: [" + ", ".join(S6) + "]\nmap:\n"
                 + "".join(f"  {k}: {v}\n" for k, v in BY_NAME.items()))
    cfg = load_config(None, [f"kd.class_map={f}"])
    assert torch.equal(kd_class_map(cfg.kd.class_map, T8, S6), kd_class_map(MATRIX, T8, S6))
    names, m = parse_class_map(f, T8)  # pseudo-label: the file names its output classes
    assert names == S6 and torch.equal(m, kd_class_map(MATRIX, T8, S6))


def test_ignored_teacher_classes_are_dropped_and_the_rest_renormalised():
    m = kd_class_map({**BY_NAME, "Water": "ignore", "Road": None}, T8, S6)
    assert not m[6].any() and not m[4].any()
    probs = torch.full((1, 8, 1, 1), 1 / 8)
    out = map_classes(probs, m)[0, :, 0, 0]
    assert out.sum().item() == pytest.approx(1.0)
    assert out[0].item() == pytest.approx(1 / 6)  # Background only, Water's share dropped


@pytest.mark.parametrize("change,match", [
    ({"Rangland": "Grassland"}, (r"kd\.class_map: 'Rangland' is not a teacher class \(did "
                                 r"you mean 'Rangeland'\?\)")),
    ({"Tree": "Forrest"}, (r"kd\.class_map: Tree: 'Forrest' is not a student class \(did you "
                           r"mean 'Forest'\?\)")),
    ({"Tree": "forest"}, r"did you mean 'Forest'"),
    ({"Rangeland": {"Grassland": 0.7, "SemiNatural": 0.2}}, r"Rangeland: fractions sum to 0\.9"),
    ({"Rangeland": {"Grassland": 1.2, "SemiNatural": -0.2}}, r"fraction -0\.2 .* must be a number > 0"),
    ({"Tree": 3}, r"Tree: expected a student class"),
])
def test_bad_names_and_splits_are_named(change, match):
    raw = {**BY_NAME, **change}
    if "Rangland" in change:
        del raw["Rangeland"]
    with pytest.raises(ValueError, match=match):
        kd_class_map(raw, T8, S6)


def test_every_teacher_class_must_be_mapped_or_ignored():
    raw = {k: v for k, v in BY_NAME.items() if k != "Water"}
    with pytest.raises(ValueError, match="teacher classes not mapped: Water .*or to ignore"):
        kd_class_map(raw, T8, S6)


def test_file_errors_name_the_file(tmp_path):
    f = tmp_path / "cmap.yaml"
    f.write_text("classes: [" + ", ".join(S6) + "]\nmap: {Tree: Forst}\n")
    with pytest.raises(ValueError, match=rf"{f}: teacher classes not mapped: Rangeland"):
        parse_class_map(f, T8)
    f.write_text("classes: [" + ", ".join(S6) + "]\nmap: {" + ", ".join(
        f"{k}: {'Forst' if k == 'Tree' else 'Forest'}" for k in T8) + "}\n")
    with pytest.raises(ValueError, match=rf"{f}: Tree: 'Forst' is not a student class \(did "
                       r"you mean 'Forest'\?\)"):
        parse_class_map(f, T8)
    f.write_text("map: {Tree: Forest}\n")
    with pytest.raises(ValueError, match=rf"{f}: name the output classes"):
        parse_class_map(f, T8)
    with pytest.raises(ValueError, match=r"differ from the student's"):
        kd_class_map({"classes": ["a"], "map": {"Tree": "a"}}, T8, S6)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'none.yaml'}: class map file not found"):
        parse_class_map(tmp_path / "none.yaml", T8)
    f.write_text("map: [unclosed\n")
    with pytest.raises(ValueError, match=rf"{f}: cannot read the class map"):
        parse_class_map(f, T8)


def test_a_matrix_keeps_its_shape_check():
    with pytest.raises(ValueError, match=r"kd\.class_map has shape \[2, 2\], expected \[8, 6\]"):
        kd_class_map([[1, 0], [0, 1]], T8, S6)


def test_one_class_map_application_for_kd_and_pseudo_labels():
    """compress.classmap.map_classes is what losses use (re-exported) and what pseudo-labels
    use on one image ([Ct, H, W]), with or without renormalising."""
    import compress.classmap
    import compress.losses

    assert compress.losses.map_classes is compress.classmap.map_classes
    torch.manual_seed(0)
    probs = torch.rand(2, 3, 4, 5).softmax(1)
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # the third class ignored
    batched = map_classes(probs, m)
    assert torch.allclose(batched.sum(1), torch.ones(2, 4, 5))
    assert torch.allclose(map_classes(probs[1], m), batched[1])
    raw = map_classes(probs[0], m, renormalise=False)
    assert torch.allclose(raw, torch.einsum("thw,ts->shw", probs[0], m))
