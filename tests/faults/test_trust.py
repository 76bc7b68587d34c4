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
    from compress.distill import recipe_factories

    cfg = load_config(None, ["model.factory=tests.compress.custom_teacher:build",
                             "teacher.model={arch: x, encoder: y, factory: a.b:c}"])
    assert recipe_factories(cfg) == {"tests.compress.custom_teacher:build", "a.b:c"}


# ---------------------------------------------------------------- round 3: run dirs are data


def _run_dir_naming(root: Path, overrides: list[str], command: str) -> Path:
    """A run dir (as `compress train` leaves one stopped in its first epoch: config.yaml,
    no last.pt yet) whose config.yaml names the evil factory through ``overrides``."""
    from compress.config import dump_config, load_config
    from tests.faults.test_bad_inputs import QUICK, TINY

    extra = ["w_task=1", "kd.response.weight=0"] if command == "train" else []
    cfg = load_config(QUICK, [*TINY, *extra, f"output_dir={root}", *overrides])
    run = root / f"{command}-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


@pytest.mark.parametrize(("command", "key", "override"), [
    ("train", "model.factory", f"model.factory={EVIL}"),
    ("distill", "teacher.model.factory",
     f"teacher.model={{arch: Unet, encoder: tu-efficientnet_lite0, factory: '{EVIL}'}}"),
])
def test_resume_never_imports_a_factory_its_run_dir_names(command, key, override, evil,
                                                          tmp_path, monkeypatch):
    """`--resume RUN_DIR` reads the run's config.yaml: a run dir handed over by someone else
    is data, so the factory it names is refused (one line naming the key, the file and
    the module), nothing is imported, the run dir is unchanged."""
    monkeypatch.syspath_prepend(str(evil["mods"]))
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    run = _run_dir_naming(tmp_path, [override, f"teacher.checkpoint={evil['good']}"], command)
    before = _tree(run)
    line = error_line(run_inprocess("compress", [command, "-q", "--resume", str(run)]))
    assert key in line and EVIL in line and "config.yaml" in line, line
    assert "--trust-factory" in line, line
    assert not evil["marker"].exists(), "the factory named by the run dir RAN"
    assert _tree(run) == before
    record("factory_refused", f"{command} --resume")


def test_resume_changed_config_is_refused(tmp_path):
    """An edited config.yaml (lr 0.003 -> 0.9, a loss term switched) no longer resumes
    silently: it is compared with the config saved in last.pt, and refused naming the
    keys unless --resume-changed."""
    from compress.train import fit
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path, ["train.epochs=1", "data.synthetic_length=8",
                                 "data.synthetic_val_length=4", "train.threads=1"])
    run = fit(cfg, show_progress=False).run_dir
    text = (run / "config.yaml").read_text()
    assert "lr: 0.003" in text and "dice: 0.0" in text, text
    (run / "config.yaml").write_text(text.replace("lr: 0.003", "lr: 0.9")
                                     .replace("dice: 0.0", "dice: 1.0"))
    before = _tree(run)
    line = error_line(run_inprocess("compress", ["train", "-q", "--resume", str(run),
                                                 "train.epochs=2"]))
    assert "last.pt" in line and "train.lr: 0.003 -> 0.9" in line, line
    assert "loss.dice" in line and "--resume-changed" in line, line
    assert _tree(run) == before


def test_recipe_names_are_trusted_run_dir_names_are_not(tmp_path):
    """The user's own recipe may name an encoder or kwarg off the registries (trusted:
    they wrote it); the same names read back from a run dir need --trust-factory."""
    from compress.config import load_config
    from compress.distill import recipe_factories
    from compress.rundir import check_run_recipe

    cfg = load_config(None, ["model.encoder=tu-hf-hub:timm/x",
                             "model.kwargs={checkpoint_path: /x, decoder_attention_type: scse}"])
    assert recipe_factories(cfg) == {"tu-hf-hub:timm/x", "kwargs.checkpoint_path"}
    with pytest.raises(ModelError, match="model.encoder names the encoder 'tu-hf-hub:timm/x'"):
        check_run_recipe(tmp_path, cfg)
    check_run_recipe(tmp_path, cfg, ["model.encoder=tu-hf-hub:timm/x",
                                     "model.kwargs={checkpoint_path: /x}"])  # given now


def test_a_run_dirs_recipe_cannot_send_metrics_off_the_machine(tmp_path):
    """A run dir handed over may say W&B online or a remote MLflow server; resuming it
    from its own config.yaml refuses that unless the user gives the key now. A local store
    and offline W&B pass."""
    from compress.config import ConfigError, load_config
    from compress.rundir import check_run_recipe

    online = load_config(None, ["log.wandb.mode=online"])
    with pytest.raises(ConfigError, match=r"config.yaml: log.wandb.mode 'online' would send"):
        check_run_recipe(tmp_path, online)
    check_run_recipe(tmp_path, online, ["log.wandb.mode=online"])  # the user agrees now
    remote = load_config(None, ["log.mlflow.tracking_uri=http://example.invalid:5000"])
    with pytest.raises(ConfigError, match=r"log.mlflow.tracking_uri 'http://example.invalid"):
        check_run_recipe(tmp_path, remote)
    check_run_recipe(tmp_path, remote, ["log.mlflow=null"])
    for local in (["log.wandb.mode=offline"], [f"log.mlflow.tracking_uri=file://{tmp_path}/m"],
                  ["log.mlflow.tracking_uri=sqlite:///m.db"], ["log.mlflow.tracking_uri=mlruns"]):
        check_run_recipe(tmp_path, load_config(None, local))


def test_a_trusted_encoder_is_what_stood_in_the_way(tmp_path, monkeypatch):
    """Control: trusting the encoder by name lets timm read the folder it names (here a
    missing one): the refusal was the only thing keeping the file read from happening."""
    monkeypatch.setattr(models, "_TRUSTED", set())
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    name = f"tu-local-dir:{tmp_path / 'elsewhere'}"
    spec = tiny_spec()
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(spec), replace(spec, encoder=name))
    line = error_line(run_inprocess("bench", ["flops", str(ckpt)]))
    assert "not trusted" in line and name in line, line
    r = run_inprocess("bench", ["--trust-factory", name, "flops", str(ckpt)])
    assert "not trusted" not in r.text and "elsewhere" in r.text, r.text[-1500:]


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
    # round 3: the digest is a self-digest anyone can recompute: the ONNX's own spec wins
    ("spec-mean-edited", _edit(True)(lambda m, d: m["spec"].update(mean=[0.5, 0.5, 0.5])),
     ("spec mean=", "embedded spec")),
    ("spec-classes-reversed", _edit(True)(lambda m, d: m["spec"].update(
        class_names=m["spec"]["class_names"][::-1])), ("spec class_names=", "embedded spec")),
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


def test_report_refuses_the_export_of_another_student(export_dir, tmp_path):
    """`bench report --student A --artifacts <export of B>` scored B's export as A's: the
    manifest's source_sha256 is now compared with the --student file."""
    spec = tiny_spec()
    other = save_checkpoint(tmp_path / "other.pt", create_model(spec), spec)
    line = error_line(run_inprocess("bench", [
        "report", "--teacher", str(other), "--student", str(other), "--artifacts",
        str(export_dir), "--data-kind", "synthetic", "--out", str(tmp_path / "out"), "-q"]))
    assert str(export_dir) in line and str(other) in line and "--student" in line, line
    assert not (tmp_path / "out").exists()


def _nan_copy(export_dir: Path, d: Path, manifest: bool) -> Path:
    """The export's model.onnx with NaN weights (in ``d``, with a re-digested manifest
    listing the new file when ``manifest``)."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(export_dir, d)
    proto = onnx.load(str(d / "model.onnx"))
    init = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    init.CopyFrom(numpy_helper.from_array(
        np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name))
    onnx.save(proto, str(d / "model.onnx"))
    if not manifest:
        (d / "manifest.json").unlink()
    return d / "model.onnx"


def test_nan_outputs_are_refused_at_export_verification(export_dir, tmp_path):
    """An ONNX whose outputs are NaN is not verified (its argmax would be class 0 and
    agree with nothing, or score as if it worked)."""
    import numpy as np

    from deploy.errors import DeployError
    from deploy.export import verify_onnx

    path = _nan_copy(export_dir, tmp_path / "exp", manifest=False)
    spec = tiny_spec(class_names=list(__import__("compress.data").data.SYNTHETIC_CLASSES))
    images = np.zeros((2, 3, 64, 64), np.float32)
    with pytest.raises(DeployError, match="NaN/inf"):
        verify_onnx(path, create_model(spec).eval(), [(images, None)], threads=1)


def test_a_file_the_manifest_does_not_list_is_named(export_dir, tmp_path):
    """A file in an export dir that manifest.json does not list loads only with a warning
    naming it (unverified), never as if the manifest vouched for it (the real console
    entry: the user sees the line)."""
    import shutil

    from tests.faults._helpers import run_console

    d = tmp_path / "export"
    shutil.copytree(export_dir, d)
    shutil.copy(d / "model.onnx", d / "extra.onnx")
    r = run_console("bench", ["latency", str(d / "extra.onnx"), "--runs", "1", "--warmup", "0"])
    assert r.code == 0, r.text[-2000:]
    assert f"warning: {d / 'extra.onnx'} is not listed in the manifest.json" in r.stderr, \
        r.stderr[-2000:]


def test_binary_masks_saved_as_0_255_are_warned_about(tmp_path, caplog):
    """Binary masks saved 0/255 collide with ignore index 255 (every foreground pixel
    ignored): eval warns, naming the convention; a 0/1 data set gets no warning."""
    import numpy as np

    from compress.data import folder_source, ignore_collision
    from tests.faults.test_bad_inputs import _png

    for name, fg in (("ds255", 255), ("ds01", 1)):
        root = tmp_path / name
        (root).mkdir()
        (root / "classes.txt").write_text("lesion\n")
        for split in ("train", "val"):
            for i in range(2):
                _png(root / "images" / split / f"{i}.png", np.full((64, 64, 3), 90, np.uint8))
                mask = np.zeros((64, 64), np.uint8)
                mask[8:48, 8:48] = fg
                _png(root / "masks" / split / f"{i}.png", mask)
    why = ignore_collision(folder_source(tmp_path / "ds255", "val"))
    assert why is not None and "0/255" in why and "'lesion'" in why, why
    assert ignore_collision(folder_source(tmp_path / "ds01", "val")) is None
    spec = tiny_spec(classes=1, class_names=["lesion"])
    ckpt = save_checkpoint(tmp_path / "bin.pt", create_model(spec), spec)
    r = run_inprocess("compress", ["eval", str(ckpt), "--data", str(tmp_path / "ds255"),
                                   "--kind", "folder", "--out", str(tmp_path / "ev")])
    assert r.code == 0, r.text[-2000:]
    warned = [m for m in caplog.messages if m.startswith("warning:") and "0/255" in m]
    assert len(warned) == 1 and "'lesion'" in warned[0], caplog.messages
    # and training's data set-up says the same (train and val split: here one folder)
    from compress.config import load_config
    from compress.train import setup_data

    caplog.clear()
    cfg = load_config(None, ["data.kind=folder", f"data.root={tmp_path / 'ds255'}",
                             "data.size=[64,64]", "data.batch_size=1"])
    setup_data(cfg, spec, ["lesion"], 0, 1)
    warned = [m for m in caplog.messages if "0/255" in m]
    assert len(warned) == 2 and all("'lesion'" in m for m in warned), caplog.messages


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
