"""compress.outdir: a rerun into the toolkit's own folder works; a user's file is never
written over or removed; bad ``--out`` paths are refused before anything is touched."""

from __future__ import annotations

import json
import os

import pytest

from compress.outdir import (
    LISTING,
    OutputError,
    new_output,
    open_out,
    open_out_file,
    write_json_output,
)


def _write(out, names, text="ours"):
    out.claim(names)
    for n in names:
        (out / n).parent.mkdir(parents=True, exist_ok=True)
        (out / n).write_text(text)
    out.record(names)


def test_rerun_into_its_own_folder_writes_over_its_own_files(tmp_path):
    d = tmp_path / "res"
    _write(open_out(d), ["eval.json", "sub/a.png"])
    listing = json.loads((d / LISTING).read_text())
    assert set(listing["files"]) == {"eval.json", "sub/a.png"}
    assert all(len(v) == 64 for v in listing["files"].values())  # sha256 of each
    (d / "notes.txt").write_text("the user's")  # other files beside ours are fine
    _write(open_out(d), ["eval.json", "sub/a.png"], text="second run")
    assert (d / "eval.json").read_text() == "second run"
    assert (d / "notes.txt").read_text() == "the user's"


def test_a_users_file_of_the_same_name_is_refused_untouched(tmp_path):
    d = tmp_path / "res"
    d.mkdir()
    _write(open_out(d), ["a.json"])
    (d / "report.md").write_text("mine")
    with pytest.raises(OutputError, match=r"report\.md exists \(not written by segcompress\)"):
        open_out(d).claim(["a.json", "report.md"])
    assert (d / "report.md").read_text() == "mine"
    listing = json.loads((d / LISTING).read_text())
    assert "report.md" not in listing["files"]  # the refused claim listed nothing


def test_a_file_edited_since_it_was_written_is_no_longer_ours(tmp_path):
    d = tmp_path / "res"
    _write(open_out(d), ["eval.json", "old.png"])
    (d / "eval.json").write_text("hand-edited")
    (d / "old.png").write_text("hand-edited too")
    out = open_out(d)
    with pytest.raises(OutputError, match="edited since the toolkit wrote it"):
        out.check(["eval.json"])
    # removing stale files: an edited one stays, and leaves the listing
    assert out.remove_stale([]) == []
    assert (d / "old.png").read_text() == "hand-edited too"
    assert out.listed() == []


def test_remove_stale_removes_only_what_it_listed_unedited(tmp_path):
    d = tmp_path / "res"
    _write(open_out(d), ["masks/a.png", "masks/b.png"])
    (d / "masks" / "user.png").write_text("a user's own mask")
    out = open_out(d)
    assert out.remove_stale(["masks/a.png"], under="masks") == ["masks/b.png"]
    assert sorted(p.name for p in (d / "masks").iterdir()) == ["a.png", "user.png"]


def test_a_run_killed_after_claiming_can_be_rerun(tmp_path):
    d = tmp_path / "res"
    out = open_out(d)
    out.claim(["eval.json"])
    (d / "eval.json").write_text("half")  # killed before record()
    _write(open_out(d), ["eval.json"], text="rerun")
    assert (d / "eval.json").read_text() == "rerun"


@pytest.mark.parametrize("case", ["file", "dangling", "cwd", "foreign", "under-a-file"])
def test_bad_out_paths_are_refused_and_nothing_is_touched(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = {
        "file": tmp_path / "f.json",
        "dangling": tmp_path / "link",
        "cwd": tmp_path / ".",
        "foreign": tmp_path / "theirs",
        "under-a-file": tmp_path / "f.json" / "sub",
    }[case]
    (tmp_path / "f.json").write_text("keep")
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x").write_text("keep")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    why = {
        "file": "existing file",
        "dangling": "dangling symlink",
        "cwd": "current folder",
        "foreign": "not written by segcompress",
        "under-a-file": "is not a folder",
    }[case]
    with pytest.raises(OutputError, match=why):
        open_out(target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "f.json").read_text() == "keep"


def test_a_symlinked_subfolder_is_not_written_through(tmp_path):
    d, elsewhere = tmp_path / "res", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write(open_out(d), ["stats.json"])
    os.symlink(elsewhere, d / "previews")
    with pytest.raises(OutputError, match="is a symlink"):
        open_out(d).claim(["previews/a.png"])
    assert list(elsewhere.iterdir()) == []


def test_shared_folder_checks_only_the_names_written(tmp_path):
    d = tmp_path / "study"
    (d / "runs").mkdir(parents=True)
    out = open_out(d, "study dir", shared=True)
    _write(out, ["comparison.md"])
    (d / "comparison.csv").write_text("mine")
    with pytest.raises(OutputError, match="comparison.csv"):
        open_out(d, "study dir", shared=True).check(["comparison.md", "comparison.csv"])


def test_json_file_outputs(tmp_path):
    p = tmp_path / "lat.json"
    write_json_output(p, {"a": 1})
    write_json_output(p, {"a": 2})  # ours: a rerun writes over it
    assert json.loads(p.read_text()) == {"a": 2}
    user = tmp_path / "flops.json"
    user.write_text('{"kept": true}')
    with pytest.raises(OutputError, match="not written by segcompress"):
        open_out_file(user)
    assert json.loads(user.read_text()) == {"kept": True}
    with pytest.raises(OutputError, match="is a folder"):
        open_out_file(tmp_path)


def test_new_output(tmp_path):
    (tmp_path / "x.pt").write_text("keep")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.pt")
    with pytest.raises(OutputError, match="exists"):
        new_output(tmp_path / "x.pt")
    with pytest.raises(OutputError, match="dangling symlink"):
        new_output(tmp_path / "dangling.pt")
    with pytest.raises(OutputError, match="is not a folder"):
        new_output(tmp_path / "x.pt" / "y.pt")
    assert new_output(tmp_path / "new.pt") == tmp_path / "new.pt"
