"""Trust boundaries: no code from checkpoints or manifests.

A checkpoint or ``manifest.json`` may name a model factory (``package.module:function``).
Importing the module runs its top level, calling the function runs anything: the toolkit
does neither unless the user named that factory (recipe ``model.factory``,
``--trust-factory`` or ``SEGCOMPRESS_TRUSTED_FACTORIES``). Each loader below is given a
checkpoint (or export dir) naming a factory whose import or call would create a marker
file; each must answer with one error line naming the factory and how to trust it, and the
marker must never appear.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from compress import models
from compress.models import ModelError, create_model, save_checkpoint
from tests.conftest import tiny_spec
from tests.faults._helpers import error_line, record, run_inprocess
from tests.faults.test_bad_inputs import DISTILL, folder_dataset

EVIL_MODULE = f"segc_evil_{uuid.uuid4().hex[:8]}"
EVIL = f"{EVIL_MODULE}:build"


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> dict[str, Path]:
    """A module whose import (and whose factory) writes a marker; a checkpoint, a run dir
    and an export dir that name it; a good checkpoint and images for the other inputs."""
    d = tmp_path_factory.mktemp("trust")
    marker = d / "FACTORY_RAN"
    mods = d / "mods"
    mods.mkdir()
    (mods / f"{EVIL_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported\\n')\n"
        "def build(classes, **kw):\n"
        f"    open({str(marker)!r}, 'a').write('called\\n')\n"
        "    raise SystemExit(0)\n")
    spec = tiny_spec()
    model = create_model(spec)
    evil_spec = replace(spec, factory=EVIL)
    f = {"marker": marker, "mods": mods}
    f["ckpt"] = save_checkpoint(d / "evil.pt", model, evil_spec, metrics={"miou": 0.5}, epoch=1)
    f["good"] = save_checkpoint(d / "good.pt", model, spec, metrics=None, epoch=1)
    f["good_ckpt"] = f["good"]
    # a finished run whose best.pt names the factory, and a study collecting it
    run = d / "runs" / "evil-run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "best.pt", model, evil_spec,
                    metrics={"miou": 0.5}, epoch=1, config={"seed": 0})
    (run / "summary.json").write_text(json.dumps({"best_val_miou": 0.5, "epochs": 1,
                                                  "train_seconds": 1.0}))
    (run / "config.yaml").write_text("name: evil\n")
    f["study"] = d / "study.yaml"
    f["study"].write_text(yaml.safe_dump({
        "name": "evil", "output_dir": str(d / "studies"), "baseline": "evil",
        "recipes": [{"name": "evil", "runs": [str(run)]}]}))
    # an export dir whose manifest names the factory (written as an export writes it)
    from deploy.manifest import new_manifest, sha256_file, write_manifest

    exp = d / "export"
    exp.mkdir()
    write_manifest(exp, new_manifest(f["good"], sha256_file(f["good"]), evil_spec, {}, {}))
    f["export"] = exp
    f["ds"] = folder_dataset(d / "ds")
    f["images"] = f["ds"] / "images" / "val"
    return f


LOADERS = [
    ("eval", "compress", ["eval", "{ckpt}", "--kind", "synthetic", "--data", "unused",
                          "--out", "{out}"]),
    ("export", "compress", ["export", "{ckpt}", "--out", "{out}"]),
    ("pseudo-label", "compress", ["pseudo-label", "--teacher", "{ckpt}", "--images", "{images}",
                                  "--out", "{out}", "-q"]),
    ("distill-teacher", "compress", [*DISTILL, "teacher.checkpoint={ckpt}"]),
    ("compare-collect", "compress", ["compare", "-c", "{study}", "--collect-only", "-q"]),
    ("bench-flops", "bench", ["flops", "{ckpt}"]),
    ("bench-flops-export-dir", "bench", ["flops", "{export}"]),
    ("bench-latency", "bench", ["latency", "{ckpt}", "--runs", "1", "--warmup", "0"]),
    ("bench-report", "bench", ["report", "--teacher", "{ckpt}", "--student", "{good}",
                               "--data-kind", "synthetic", "--out", "{out}", "-q"]),
]


@pytest.mark.parametrize(("prog", "argv"), [pytest.param(p, a, id=i) for i, p, a in LOADERS])
def test_factory_named_by_a_file_never_runs(prog, argv, evil, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(evil["mods"]))  # importable: only trust stands in the way
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    values = {k: str(v) for k, v in evil.items()} | {"out": str(tmp_path / "out")}
    r = run_inprocess(prog, [a.format(**values) for a in argv])
    line = error_line(r)
    assert EVIL in line and "--trust-factory" in line, line
    assert not evil["marker"].exists(), "the factory named by the file RAN"
    record("factory_refused", argv[0])


@pytest.mark.parametrize("loader", ["load_model", "load_runtime"])
def test_python_loaders_refuse_an_untrusted_factory(loader, evil, monkeypatch):
    monkeypatch.syspath_prepend(str(evil["mods"]))
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    if loader == "load_model":
        from compress import load_model as load
    else:
        from deploy import load_runtime as load
    with pytest.raises(ModelError, match=f"{EVIL}.*--trust-factory"):
        load(evil["ckpt"])
    assert not evil["marker"].exists()
    record("factory_refused", loader)


def test_nothing_is_imported_before_the_decision(evil, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(evil["mods"]))
    with pytest.raises(ModelError):
        create_model(replace(tiny_spec(), factory=EVIL))
    assert EVIL_MODULE not in sys.modules


def test_a_trusted_factory_runs(tmp_path, monkeypatch):
    """The user's own teacher still loads once named: by flag, or by environment."""
    monkeypatch.setattr(models, "_TRUSTED", set())
    name = "tests.compress.custom_teacher:build"
    spec = models.make_spec(arch="custom", encoder="none", classes=3, factory=name,
                            input_size=(32, 32))
    ckpt = save_checkpoint(tmp_path / "custom.pt", create_model(spec, trusted={name}), spec)
    with pytest.raises(ModelError, match="--trust-factory"):
        models.load_model(ckpt)
    monkeypatch.setenv(models.TRUST_ENV, name)
    assert models.load_model(ckpt) is not None
    monkeypatch.delenv(models.TRUST_ENV)
    r = run_inprocess("bench", ["--trust-factory", name, "flops", str(ckpt)])
    assert r.code == 0, r.text[-2000:]
    assert "GMACs" in r.text or "MACs" in r.text


def test_recipe_factory_is_trusted(tmp_path, monkeypatch):
    """The recipe is the user's own: its ``model.factory`` needs no extra flag."""
    monkeypatch.setattr(models, "_TRUSTED", set())
    from compress.config import load_config
    from compress.train import recipe_factories

    cfg = load_config(None, ["model.factory=tests.compress.custom_teacher:build",
                             "teacher.model={arch: x, encoder: y, factory: a.b:c}"])
    assert recipe_factories(cfg) == {"tests.compress.custom_teacher:build", "a.b:c"}


# ---------------------------------------------------------------- manifests cannot be bent


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from compress.data import SYNTHETIC_CLASSES
    from deploy.pipeline import ExportConfig, export_checkpoint

    d = tmp_path_factory.mktemp("trust_export")
    spec = tiny_spec(class_names=list(SYNTHETIC_CLASSES))
    ckpt = save_checkpoint(d / "best.pt", create_model(spec), spec)
    export_checkpoint(ckpt, d / "export", ExportConfig(threads=1, val_size=4))
    return d / "export"


def _edit(redigest: bool):
    def wrap(fn):
        def mutate(d: Path) -> None:
            from deploy.manifest import manifest_digest

            m = json.loads((d / "manifest.json").read_text())
            fn(m, d)
            if redigest:
                m["manifest_sha256"] = manifest_digest(m)
            (d / "manifest.json").write_text(json.dumps(m))
        return mutate
    return wrap


def _symlink_out(d: Path) -> None:
    outside = d.parent / "outside.onnx"
    outside.write_bytes((d / "model.onnx").read_bytes())
    (d / "model.onnx").unlink()
    (d / "model.onnx").symlink_to(outside)


def _art(m, **kw):
    m["artifacts"][0].update(kw)


MANIFEST_ROWS = [
    ("dotdot-artifact", _edit(True)(lambda m, d: _art(m, file="../loose/model.onnx")),
     ("../loose/model.onnx", "not a file inside")),
    ("absolute-artifact", _edit(True)(lambda m, d: _art(m, file="/etc/hostname")),
     ("/etc/hostname", "not a file inside")),
    ("companion-escapes", _edit(True)(lambda m, d: _art(m, files=[
        {"file": "../../../etc/hostname", "sha256": "0" * 64}])), ("../../../etc/hostname",)),
    ("symlink-out", _symlink_out, ("model.onnx", "not a file inside")),
    ("edited-spec", _edit(False)(lambda m, d: m["spec"].update(factory=EVIL)),
     ("changed after export",)),
    ("no-digest", _edit(False)(lambda m, d: m.pop("manifest_sha256")), ("manifest_sha256",)),
    ("zero-sha256", _edit(True)(lambda m, d: _art(m, sha256="0" * 64)), ("does not match",)),
    ("empty-sha256", _edit(True)(lambda m, d: _art(m, sha256="")),
     ("without a valid sha256",)),
    ("source-not-matching", _edit(True)(lambda m, d: m.update(source_sha256="1" * 64)),
     ("source_sha256",)),
]


@pytest.mark.parametrize(("mutate", "expect"),
                         [pytest.param(f, e, id=i) for i, f, e in MANIFEST_ROWS])
def test_bent_manifest_is_refused(mutate, expect, export_dir, tmp_path):
    import shutil

    d = tmp_path / "export"
    shutil.copytree(export_dir, d)
    mutate(d)
    argv = (["flops", str(d)] if "source" in str(expect) else
            ["latency", str(d / "model.onnx"), "--runs", "1", "--warmup", "0"])
    line = error_line(run_inprocess("bench", argv))
    assert all(e in line for e in expect), line
    record("bad_manifests", argv[0])


# ---------------------------------------------------------------- never delete a user's file


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    spec = tiny_spec()
    save_checkpoint(run / "checkpoints" / "best.pt", create_model(spec), spec)
    (run / "checkpoints" / "last.pt").write_bytes(b"last")
    (run / "config.yaml").write_text("name: mine\n")
    (run / "metrics.csv").write_text("epoch,miou\n1,0.5\n")
    (run / "notes.txt").write_text("my notes\n")
    return run


def test_overwrite_refuses_a_dir_that_is_not_our_export(run_dir):
    before = _tree(run_dir)
    r = run_inprocess("compress", ["export", str(run_dir / "checkpoints" / "best.pt"), "--out",
                                   str(run_dir), "--overwrite"])
    line = error_line(r)
    assert "not an export dir of ours" in line and str(run_dir) in line, line
    assert _tree(run_dir) == before
    record("files_kept", "export --overwrite onto a run dir")


def test_overwrite_refuses_an_export_holding_a_user_file(export_dir, tmp_path, run_dir):
    import shutil

    d = tmp_path / "export"
    shutil.copytree(export_dir, d)
    (d / "notes.txt").write_text("mine\n")
    before = _tree(d)
    r = run_inprocess("compress", ["export", str(run_dir / "checkpoints" / "best.pt"), "--out",
                                   str(d), "--overwrite"])
    assert "'notes.txt'" in error_line(r)
    assert _tree(d) == before
    record("files_kept", "export --overwrite onto an export holding a user file")


def test_out_appearing_during_the_export_is_left_alone(run_dir, tmp_path, monkeypatch):
    from deploy import pipeline

    out = tmp_path / "new_out"
    real = pipeline._build

    def build(*a, **kw):
        real(*a, **kw)
        out.mkdir()
        (out / "theirs.txt").write_text("written meanwhile\n")

    monkeypatch.setattr(pipeline, "_build", build)
    with pytest.raises(pipeline.ExportError, match="appeared or changed"):
        pipeline.export_checkpoint(run_dir / "checkpoints" / "best.pt", out,
                                   pipeline.ExportConfig(threads=1, val_size=4))
    assert _tree(out) == {"theirs.txt": b"written meanwhile\n"}
    assert not list(tmp_path.glob(".new_out*")), list(tmp_path.glob(".new_out*"))
    record("files_kept", "--out appearing during an export")


def test_concurrent_export_to_one_out_refused_and_stale_temps_removed(run_dir, tmp_path):
    import os
    import subprocess
    import sys

    from deploy.pipeline import TMP_MARK, ExportConfig, ExportError, export_checkpoint

    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(f"{os.getpid()}\n")  # a live export holds it
    with pytest.raises(ExportError, match="another export"):
        export_checkpoint(run_dir / "checkpoints" / "best.pt", out, ExportConfig(threads=1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock.write_text(f"{dead}\n")  # left by a killed export: taken over
    stale, foreign = tmp_path / ".x.tmp-abc", tmp_path / ".y.tmp-def"
    for d in (stale, foreign):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"12 MB of a killed export")
    (stale / TMP_MARK).write_text(f"{dead}\n")
    export_checkpoint(run_dir / "checkpoints" / "best.pt", out,
                      ExportConfig(threads=1, val_size=4))
    assert (out / "manifest.json").is_file() and not lock.exists()
    assert not stale.exists() and (foreign / "model.onnx").is_file()  # only ours removed
    mask = os.umask(0o022)
    os.umask(mask)
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_writes_honour_the_umask(tmp_path):
    import os

    from compress.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644
