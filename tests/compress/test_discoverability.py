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
