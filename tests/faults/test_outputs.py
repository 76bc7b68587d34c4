"""Issue 20, what is not an error row: reruns into the toolkit's own folders keep the
user's files, ``--resume`` removes only its own temp files, an export stopped by SIGTERM
cleans up as after Ctrl-C, and the loops that hung are bounded (accuracy control's
evaluations, a latency run estimated past 10 minutes is warned about)."""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.errors import UserError
from compress.models import create_model, save_checkpoint
from tests.conftest import tiny_spec
from tests.faults._helpers import run_and_kill


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    spec = tiny_spec()
    return save_checkpoint(
        tmp_path_factory.mktemp("outputs") / "good.pt",
        create_model(spec),
        spec,
        metrics=None,
        epoch=1,
    )


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"im{i}.png"
        )
    return folder


def test_pseudo_label_rerun_keeps_the_users_files(ckpt, tmp_path):
    """A rerun into its own output writes over its own files and removes only what its
    earlier run listed: a user's picture in previews/, a hand-made mask in masks/ and a
    hand-edited mask of an image no longer labelled all stay."""
    from compress.pseudo import pseudo_label

    imgs, out = _images(tmp_path / "imgs"), tmp_path / "out"
    pseudo_label([ckpt], imgs, out, show=False, previews=2)
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["im0.png", "im1.png"]
    (out / "previews" / "mine.png").write_bytes(b"a user's picture")
    (out / "masks" / "hand_made.png").write_bytes(b"a user's mask")
    (out / "masks" / "im2.png").write_bytes(b"hand-corrected")  # edited: no longer ours
    (imgs / "im2.png").unlink()
    (imgs / "im1.png").unlink()
    stats = pseudo_label([ckpt], imgs, out, show=False, previews=1)
    assert stats["removed_stale"] == ["im1", "im2"]  # im2: its image link (its mask: edited)
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["im0.png", "mine.png"]
    assert (out / "previews" / "mine.png").read_bytes() == b"a user's picture"
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "hand_made.png",
        "im0.png",
        "im2.png",
    ]
    assert (out / "masks" / "im2.png").read_bytes() == b"hand-corrected"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["im0.png"]


def test_pseudo_label_refuses_images_inside_out_and_touches_nothing(ckpt, tmp_path):
    from compress.pseudo import pseudo_label

    out = tmp_path / "out"
    imgs = _images(out / "images")
    before = {p.name: (p.is_symlink(), p.read_bytes()) for p in imgs.iterdir()}
    with pytest.raises(UserError, match="inside --out"):
        pseudo_label([ckpt], imgs, out, show=False)
    assert {p.name: (p.is_symlink(), p.read_bytes()) for p in imgs.iterdir()} == before


def test_resume_removes_only_its_own_temp_files(tmp_path):
    from compress.io import atomic_write_text, remove_stale_temps

    # a temp file as a killed atomic_write leaves it (the real name it makes)
    kept = {}
    with pytest.MonkeyPatch.context() as mp:

        def killed(path):
            raise SystemExit  # stop between the temp file and the rename

        mp.setattr("compress.io.os.replace", lambda *a: killed(a))
        mp.setattr("compress.io.Path.unlink", lambda self, missing_ok=False: None)
        with pytest.raises(SystemExit):
            atomic_write_text(tmp_path / "last.pt", "x")
    ours = [p for p in tmp_path.iterdir() if p.name.startswith(".last.pt.")]
    assert len(ours) == 1 and ours[0].name.endswith(".tmp")
    for name in (".notes.tmp", ".draft.tmp", ".my.backup.tmp", ".config.yaml.bak.tmp"):
        (tmp_path / name).write_text("the user's")
        kept[name] = "the user's"
    assert remove_stale_temps(tmp_path) == ours
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == kept


def test_export_overwrite_of_its_own_unedited_export_still_works(ckpt, tmp_path):
    from deploy.pipeline import ExportConfig, export_checkpoint

    out = tmp_path / "exp"
    cfg = ExportConfig(val_size=2, synthetic_val_length=2)
    export_checkpoint(ckpt, out, cfg)
    export_checkpoint(ckpt, out, ExportConfig(val_size=2, synthetic_val_length=2, overwrite=True))
    assert (out / "manifest.json").is_file()


def test_qat_checkpoint_for_tensorrt_is_a_user_error(ckpt, monkeypatch):
    import compress.qat
    from deploy.pipeline import ExportConfig, _qat_model

    monkeypatch.setattr(
        compress.qat, "load_qat_model", lambda path: (None, None, {"preset": "performance"})
    )
    with pytest.raises(UserError, match="QAT checkpoint"):
        _qat_model(ckpt, ExportConfig(int8=True, target="tensorrt"))


def test_sigterm_during_export_cleans_up_like_ctrl_c(ckpt, tmp_path):
    """SIGKILL at the manifest write leaves the temp dir and the lock (the next export
    clears them); SIGTERM at the same point leaves neither and says one line."""
    argv = [sys.executable, "-m", "segcompress.cli", "export", str(ckpt), "--val-size", "2"]
    killed = tmp_path / "killed"
    run_and_kill([*argv, "--out", str(killed)], "write:manifest.json@1", tmp_path / "m1")
    assert (tmp_path / ".killed.lock").exists() and list(tmp_path.glob(".killed.tmp-*"))
    termed = tmp_path / "termed"
    r = run_and_kill(
        [*argv, "--out", str(termed)], "write:manifest.json@1", tmp_path / "m2", sig=signal.SIGTERM
    )
    assert r.code != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert not (tmp_path / ".termed.lock").exists()
    assert not list(tmp_path.glob(".termed.tmp-*")) and not termed.exists()


def test_accuracy_control_stops_at_its_evaluation_budget(ckpt):
    from deploy.errors import QuantizationError
    from deploy.export import export_onnx
    from deploy.quantize import quantize_int8_with_accuracy_control

    spec = tiny_spec()
    import onnx

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(
            create_model(spec).eval(), Path(d) / "m.onnx", spec, size=(64, 64), simplify=False
        )
        proto = onnx.load(str(path))
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((3, 64, 64)).astype(np.float32) for _ in range(4)]
    val = [(c, rng.integers(0, 5, (64, 64))) for c in calib]
    scored = []
    import deploy.quantize

    real = deploy.quantize.MiouScorer

    class Counting(real):
        def update(self, *a, **k):
            scored.append(1)
            return super().update(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deploy.quantize, "MiouScorer", Counting)
        # budget 5: NNCF's first checks score 1 + 4 images, the next one is refused
        with pytest.raises(QuantizationError, match="stopped after scoring 5 images"):
            quantize_int8_with_accuracy_control(
                proto,
                calib,
                val,
                class_names=spec.class_names,
                ignore_index=255,
                max_drop=-1.0,
                subset_size=4,
                max_images=5,
                show=False,
            )
    assert len(scored) == 5  # no image scored past the budget


def test_a_latency_run_estimated_past_ten_minutes_is_warned_about(capsys):
    from bench.latency import Pipeline, measure_latency

    ticks = iter(range(10**6))
    pipe = Pipeline("m", lambda r: r, lambda x: x)
    measure_latency([pipe], runs=2000, warmup=1, clock=lambda: float(next(ticks)))
    err = capsys.readouterr().err
    assert "warning: timing 1 model(s) for 1 + 2000 rounds will take about" in err
    ticks = iter(range(10**6))
    measure_latency([pipe], runs=5, warmup=1, clock=lambda: float(next(ticks)))
    assert "warning" not in capsys.readouterr().err
