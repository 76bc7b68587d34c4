from pathlib import Path

import pytest
import yaml

from compress.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def _is_study(path: Path) -> bool:
    """Study files list recipes (validated in test_study.py); every other file is a recipe."""
    return "recipes" in (yaml.safe_load(path.read_text()) or {})


CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not _is_study(p))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.name


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.epochz" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("kd:\n  response:\n    temperature: hot\n")
    with pytest.raises(ConfigError, match=r"kd\.response\.temperature"):
        load_config(p)


@pytest.mark.parametrize("override,key", [
    ("kd.response.temperature=-1", "kd.response.temperature"),
    ("data.size=[100,128]", "data.size"),
    ("train.epochs=0", "train.epochs"),
    ("kd.nonsense=1", "kd.nonsense"),
])
def test_bad_overrides_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config(REPO / "configs" / "quickstart.yaml",
                      ["kd.response.temperature=6", "train.epochs=5", "data.size=[64,96]"])
    assert cfg.kd.response.temperature == 6.0
    assert cfg.train.epochs == 5
    assert cfg.data.size == (64, 96)


def test_all_zero_weights_refused():
    with pytest.raises(ConfigError, match="nothing to train"):
        load_config(None, ["w_task=0"])


def test_override_without_equals_refused():
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(None, ["train.epochs"])


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_base_recipe_is_merged_and_overridden(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntrain:\n  epochs: 7\n  lr: 0.01\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\ntrain:\n  lr: 0.02\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.name, cfg.train.epochs, cfg.train.lr) == ("b", 7, 0.02)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "b.yaml")
