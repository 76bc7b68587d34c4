"""Only the toolkit's own errors (and library errors that are bad user input) print as
one line; anything else is a bug and shows its traceback, exit code 1."""

from __future__ import annotations

import pytest

from compress.errors import USER_ERRORS, InputError, UserError, error_name
from tests.faults._helpers import error_line, run_inprocess


def _raise(exc: BaseException):
    def broken(*args, **kwargs):
        raise exc

    return broken


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("a_bug"), RuntimeError("a bug"),
                                 OSError(5, "a bug")], ids=lambda e: type(e).__name__)
def test_an_injected_bug_shows_its_traceback(monkeypatch, exc):
    import compress.config

    monkeypatch.setattr(compress.config, "describe_keys", _raise(exc))
    r = run_inprocess("compress", ["config", "--show"])
    assert r.code == 1
    assert "Traceback" in r.stderr and type(exc).__name__ in r.stderr
    assert not any(line.startswith("error:") for line in r.stderr.splitlines())


def test_an_injected_bug_in_bench_shows_its_traceback(monkeypatch, tmp_path):
    import bench.flops

    monkeypatch.setattr(bench.flops, "flops_subject", _raise(KeyError("a_bug")))
    r = run_inprocess("bench", ["flops", str(tmp_path / "model.pt")])
    assert r.code == 1 and "Traceback" in r.stderr and "KeyError" in r.stderr, r.text


def test_the_toolkits_own_errors_stay_one_line(monkeypatch):
    import compress.config

    monkeypatch.setattr(compress.config, "describe_keys",
                        _raise(InputError("--thing 3: must be even")))
    line = error_line(run_inprocess("compress", ["config", "--show"]))
    assert line == "error: --thing 3: must be even"


def test_every_project_error_is_a_user_error():
    from compress.config import ConfigError
    from compress.data import DataError
    from compress.errors import TrainingDiverged
    from compress.io import UnsafeFileError, WriteError, YAMLRefused
    from compress.models import ModelError
    from compress.zoo.registry import ZooError
    from deploy.errors import DeployError, ManifestError

    for cls in (ConfigError, DataError, UnsafeFileError, WriteError, YAMLRefused, ModelError,
                TrainingDiverged, ZooError, DeployError, ManifestError, InputError):
        assert issubclass(cls, UserError) and issubclass(cls, USER_ERRORS), cls
    for bug in (ValueError, RuntimeError, OSError, KeyError, TypeError, AttributeError):
        assert not issubclass(bug, USER_ERRORS), bug
    assert error_name(ConfigError("x")) == "ConfigError(ValueError)"
    assert error_name(KeyError("x")) == "KeyError"
    assert error_name(TrainingDiverged("x")) == "TrainingDiverged"
