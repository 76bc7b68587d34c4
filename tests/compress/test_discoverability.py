"""Errors that lead a new user to the right key: "did you mean", Hydra / argparse habits,
and blame on the command line when the typo is there."""

from __future__ import annotations

import pytest

from compress.config import ConfigError, load_config
from tests.conftest import REPO
from tests.workflows.helpers import run

QUICK = REPO / "configs" / "quickstart.yaml"


@pytest.mark.parametrize("override, source, hint", [
    ("train.epochz=3", "command-line override 'train.epochz=3'", "did you mean 'train.epochs'"),
    ("distillation.temperature=6.0", "command-line override", "'kd.response.temperature'"),
    ("epochs=3", "command-line override 'epochs=3'", "'train.epochs'"),
    ("train.lr=-1", "command-line override 'train.lr=-1'", "greater than 0"),
])
def test_override_errors_name_the_command_line_and_the_right_key(override, source, hint):
    """Before: a command-line typo was blamed on the YAML file, with no suggestion."""
    with pytest.raises(ConfigError) as e:
        load_config(QUICK, [override])
    assert str(e.value).startswith(source) and hint in str(e.value)
    assert str(QUICK) not in str(e.value)


@pytest.mark.parametrize("key, hint", [
    ("distillation.alpha", "'kd.response.weight' or 'w_task'"),
    ("distillation.beta", "'kd.response.weight' or 'w_task'"),
    ("distillation.temperature", "'kd.response.temperature'"),
    ("teacher.lora_checkpoint", "'teacher.adapter'"),
    ("training.lr", "'train.lr'"),
    ("training.epochs", "'train.epochs'"),
])
def test_the_seeds_recipe_keys_get_our_key(key, hint):
    with pytest.raises(ConfigError) as e:
        load_config(QUICK, [f"{key}=0.5"])
    msg = str(e.value)
    assert msg.startswith(f"command-line override '{key}=0.5': unknown key ")
    assert msg.endswith(f"(did you mean {hint}?)")


@pytest.mark.parametrize("flag, key", [("--total_epochs", "train.epochs"),
                                       ("--teacher_checkpoint", "teacher.checkpoint"),
                                       ("--teacher-checkpoint", "teacher.checkpoint"),
                                       ("--distillation_alpha", "kd.response.weight")])
def test_the_seeds_flags_get_the_override_spelling(flag, key):
    import click

    from compress.config import suggest_key
    from compress.errors import one_line

    msg = one_line(click.exceptions.NoSuchOption(flag), suggest_key)
    assert f"No such option '{flag}'" in msg and f"e.g. {key}=VALUE" in msg


def test_a_typo_in_the_file_is_blamed_on_the_file_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'train\.epochz' \(did you "
                                          r"mean 'train\.epochs'\?\)"):
        load_config(bad)


def test_argparse_style_option_gets_the_override_spelling():
    r = run("compress", "train", "-c", str(QUICK), "--epochs", "5")
    assert r.code != 0
    assert "No such option: --epochs" in r.err and "train.epochs=VALUE" in r.err


def test_unknown_feature_level_is_refused_even_at_weight_zero():
    """Before: kd.feature.levels=[stride7] passed while kd.feature.weight was 0."""
    with pytest.raises(ConfigError, match=r"kd\.feature\.levels.*stride7.*valid: stride4"):
        load_config(None, ["kd.feature.levels=[stride7]"])
    with pytest.raises(ConfigError, match=r"kd\.cwd\.levels.*logit"):
        load_config(None, ["kd.cwd.levels=[logit]"])


def test_config_show_lists_every_key_with_type_value_and_help():
    r = run("compress", "config", "--show", str(QUICK), "train.epochs=3")
    assert r.code == 0, r.text
    lines = {ln.split()[0]: ln for ln in r.out.splitlines()}
    for key in ("name", "data.size", "model.encoder", "loss.dice", "w_task", "kd.class_map",
                "kd.feature.levels", "kd.cwd.weight", "teacher.checkpoint", "train.lr",
                "train.save_every", "train.test_split"):
        assert key in lines, key
    assert lines["train.epochs"].split()[1:3] == ["int", "3"]
    assert "start even if the teacher is at chance" in lines["teacher.allow_weak"]
    assert lines["kd.response.temperature"].split()[1:3] == ["float", "2.0"]
