"""bench gate: a check regresses only when it slows against the reference workload timed
in the same run, so a uniformly busier machine passes and a slower check fails."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.gate import KEY, compare_runs, read_run
from compress.errors import InputError


def run_file(path, **checks):
    """``name=(median ms, ratio to the reference)``."""
    bench = [{"name": n, "stats": {"median": ms / 1e3}, "extra_info": {KEY: ratio}}
             for n, (ms, ratio) in checks.items()]
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": bench}))
    return path


def test_a_busier_machine_passes_and_a_slower_check_fails(tmp_path):
    old = run_file(tmp_path / "old.json", step=(2.0, 2.0), fwd=(4.0, 4.0))
    # the machine 70% busier: every raw median slower, the ratios as they were
    busy = run_file(tmp_path / "busy.json", step=(3.4, 2.0), fwd=(7.0, 4.1))
    worse = run_file(tmp_path / "worse.json", step=(2.5, 2.5), fwd=(4.1, 4.1))
    rows = {r.name: r for r in compare_runs(old, busy)}
    assert set(rows) == {"step", "fwd"}
    assert rows["step"].raw_change == pytest.approx(0.7)
    assert rows["step"].change == pytest.approx(0.0, abs=1e-12)
    assert rows["fwd"].change == pytest.approx(4.1 / 4.0 - 1)
    runner = CliRunner()
    r = runner.invoke(app, ["gate", str(old), str(busy)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["gate", str(old), str(worse)])
    assert r.exit_code == 1 and "SLOWER" in r.output and "step" in r.output
    assert runner.invoke(app, ["gate", str(old), str(worse), "--threshold", "30"]).exit_code == 0


def test_runs_without_the_reference_or_not_json_are_named(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(
        {"benchmarks": [{"name": "step", "stats": {"median": 0.1}, "extra_info": {}}]}))
    with pytest.raises(InputError, match=f"no check holds extra_info '{KEY}'"):
        read_run(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("not json")
    with pytest.raises(InputError, match="b.json: not a pytest-benchmark JSON file"):
        read_run(tmp_path / "b.json")
    with pytest.raises(InputError, match="no such benchmark file"):
        read_run(tmp_path / "c.json")
