"""``bench candidates``: the zoo list, an end-to-end run on two tiny candidates, and the
Pareto flag on hand-made rows."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.candidates import pareto_flags
from bench.cli import app
from compress.zoo import student_names

runner = CliRunner()


def test_list_prints_the_zoo_one_per_line():
    res = runner.invoke(app, ["candidates", "--list"])
    assert res.exit_code == 0, res.output
    assert res.output.split() == student_names()


def test_pareto_flag_on_hand_made_rows():
    rows = [
        {"name": "a", "backend": "torch", "median_ms": 10.0, "params": 5},
        {"name": "b", "backend": "torch", "median_ms": 5.0, "params": 2},
        {"name": "c", "backend": "torch", "median_ms": 12.0, "params": 4},  # slower, smaller than a
        {"name": "d", "backend": "torch", "median_ms": 5.0, "params": 2},  # tie with b: both kept
        {"name": "e", "backend": "torch", "median_ms": None, "params": 9},  # not timed
        {"name": "c", "backend": "openvino", "median_ms": 12.0, "params": 4},  # alone on its backend
        {"name": "f", "backend": "torch", "median_ms": 6.0, "params": 2},  # b is faster, same size
    ]
    assert pareto_flags(rows) == [True, True, False, True, False, True, False]


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny_unet.yaml"
    path.write_text("model:\n  arch: Unet\n  encoder: tu-mobilenetv4_conv_small_050\n"
                    "  decoder_channels: [16, 16, 8, 8, 8]\n")
    return path


QUICK = ("torch", "onnxruntime", "tensorrt-fp16")
FULL = ("torch", "onnxruntime", "openvino", "openvino-int8", "tensorrt-fp16")


@pytest.mark.parametrize("backends", [QUICK, pytest.param(FULL, marks=pytest.mark.slow)],
                         ids=["quick", "full"])
def test_candidates_end_to_end(tmp_path, tiny_recipe, tiny_checkpoint, backends):
    out = tmp_path / "cands"
    res = runner.invoke(app, [
        "candidates", "ppliteseg-mnv4s-050", str(tiny_recipe), "--size", "64x64",
        "--out", str(out), "--teacher", str(tiny_checkpoint), "--runs", "3", "--warmup", "1",
        "--threads", "1", "--calib-images", "4", "--budget-ms", "1000",
        *[a for b in backends for a in ("--backend", b)],
    ])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "candidates.json").read_text())
    for f in ("candidates.csv", "candidates.md", "candidates.png"):
        assert (out / f).stat().st_size > 0
    teacher = [r for r in rows if r["role"] == "teacher"]
    cands = [r for r in rows if r["role"] == "candidate"]
    assert len(teacher) == 1 and teacher[0]["median_ms"] > 0
    assert {(r["name"], r["backend"]) for r in cands} == {
        (n, b) for n in ("ppliteseg-mnv4s-050", "tiny_unet")
        for b in backends}
    for r in cands:
        for key in ("name", "backend", "params", "gmacs", "median_ms", "std_ms", "pareto"):
            assert key in r
        assert r["params"] > 0 and r["gmacs"] > 0
        if r["backend"] == "tensorrt-fp16":
            import torch

            if not torch.cuda.is_available():
                assert r["median_ms"] is None and "no GPU" in r["error"]
            continue
        assert r["error"] is None, r
        assert r["median_ms"] > 0 and r["std_ms"] >= 0
        assert r["speedup_vs_teacher"] > 0
        assert r["fits_budget"] is True
    # each timed backend has at least one candidate on its front
    for b in backends:
        if b != "tensorrt-fp16":
            assert any(r["pareto"] for r in cands if r["backend"] == b)
    if "openvino-int8" in backends:
        int8 = next(r for r in cands if r["backend"] == "openvino-int8")
        assert int8["precision"] == "int8"
    md = (out / "candidates.md").read_text()
    assert "latency" in md and "untrained" in md
    import torch

    if not torch.cuda.is_available():  # issue 23: one line for the backend, not a row each
        said = [line for line in md.splitlines() if "tensorrt-fp16" in line]
        assert len(said) == 1 and said[0].startswith("- Not run here: tensorrt-fp16 (")
        assert "no GPU" in said[0] and said[0].endswith(", for every candidate"), said
        assert res.output.count("tensorrt-fp16:") == 1, res.output


def test_unknown_candidate_is_one_line(tmp_path):
    res = runner.invoke(app, ["candidates", "nope", "--out", str(tmp_path / "x")])
    from compress.errors import USER_ERRORS

    assert res.exit_code != 0
    assert isinstance(res.exception, USER_ERRORS)  # the console prints it as one line
    assert "unknown student 'nope'" in str(res.exception)
