"""Workflow 004: no KD vs response KD vs feature KD in one table with mIoU, params, GMACs,
ms/image (median +- std, batch 1) and the hardware - ``compress compare`` as a user runs it."""

from __future__ import annotations

import csv

import yaml

from tests.workflows.helpers import REPO, run

STUDY = REPO / "configs" / "workflows" / "004_kd_table" / "study.yaml"


def test_baseline_response_feature_table(tmp_path):
    study = yaml.safe_load(STUDY.read_text())
    study["output_dir"] = str(tmp_path / "studies")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    r = run("compress", "compare", "-c", str(path), "-q", f"output_dir={tmp_path / 'runs'}",
            f"teacher.checkpoint={tmp_path / 'teacher.pt'}")
    assert r.code == 0, r.text
    out = tmp_path / "studies" / "wf004-kd-table"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    runs = {r["recipe"]: r for r in rows if r["row"] == "run"}
    assert set(runs) == {"no-kd", "response-kd", "feature-kd"}
    for row in runs.values():
        assert 0 <= float(row["miou"]) <= 100
        assert float(row["params"]) > 0 and float(row["gmacs"]) > 0
        assert float(row["ms_median"]) > 0 and float(row["ms_std"]) >= 0
        assert row["threads"] == "1"
    md = (out / "comparison.md").read_text()
    assert "ms" in md and "CPU" in md  # the hardware the timings ran on
    assert (out / "curves.png").is_file()
