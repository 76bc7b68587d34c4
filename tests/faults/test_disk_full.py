"""Disk full and interrupted writes: a write that fails half-way leaves the previous good
file untouched and no partial artifact.

Failures are made two ways: a writer that writes some bytes and then raises
``OSError(ENOSPC)`` (monkeypatched ``torch.save`` / ``onnx.save`` / ``write_manifest``), and a real kernel refusal: ``RLIMIT_FSIZE`` makes ``write(2)`` fail
with ``EFBIG`` past a size (Python ignores SIGXFSZ), in this process or in a console run.
"""

from __future__ import annotations

import errno
import hashlib
import io
import resource
from pathlib import Path

import pytest
import torch

from compress.io import atomic_torch_save, atomic_write_json
from compress.models import load_model
from compress.train import fit
from tests.conftest import REPO, tiny_config
from tests.faults._helpers import command_available, error_line, record

QUICK = str(REPO / "configs" / "quickstart.yaml")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def enospc_after_half(real_save):
    """A ``torch.save`` that writes half of what it would have written, then fails."""
    def save(obj, f, *a, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return save


def test_checkpoint_write_failing_half_way_keeps_the_previous_last_pt(tmp_path, monkeypatch):
    """Epoch 2's last.pt write runs out of space half-way: epoch 1's last.pt is byte for
    byte what it was, it still loads, and no temp file is left."""
    real_save = torch.save
    state = {"calls": 0, "before": None}
    cfg = tiny_config(tmp_path, ["train.epochs=2", "train.threads=1"])

    def save(obj, f, *a, **kw):
        if Path(f).name.startswith(".last.pt."):
            state["calls"] += 1
            if state["calls"] == 2:
                state["before"] = sha(Path(f).parent / "last.pt")
                return enospc_after_half(real_save)(obj, f, *a, **kw)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as e:
        fit(cfg, show_progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert e.value.errno == errno.ENOSPC
    assert "last.pt" in str(e.value) and "untouched" in str(e.value)
    run = next((tmp_path / "runs" / "tiny").iterdir())
    last = run / "checkpoints" / "last.pt"
    assert sha(last) == state["before"]
    assert torch.load(last, weights_only=True)["epoch"] == 1
    load_model(last)
    assert not temps(run)
    record("failed_writes", "last.pt (ENOSPC half-way)")


def test_real_file_size_limit_keeps_the_previous_file(tmp_path):
    """The kernel refuses the write (EFBIG) part-way through torch.save's zip stream."""
    target = tmp_path / "best.pt"
    atomic_torch_save({"w": torch.zeros(10)}, target)
    before = sha(target)
    big = {"w": torch.randn(200_000)}  # ~800 kB, over the 100 kB limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError, match="best.pt"):
            atomic_torch_save(big, target)
        with pytest.raises(OSError, match="summary.json"):
            atomic_write_json(tmp_path / "summary.json", {"x": "y" * 200_000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sha(target) == before
    assert not (tmp_path / "summary.json").exists()
    assert not temps(tmp_path)
    record("failed_writes", "best.pt (kernel EFBIG)")


def test_console_run_on_a_full_disk_says_one_line_and_leaves_no_checkpoint(tmp_path):
    """``compress train`` under a 64 kB file-size limit: config.yaml and the log fit, the
    first checkpoint does not: one error line naming the file, no .pt, no temp file."""
    out = tmp_path / "runs"
    argv = ["train", "-q", "-c", QUICK, f"output_dir={out}", "name=full", "data.size=[64,64]",
            "data.synthetic_length=8", "data.synthetic_val_length=4", "data.batch_size=4",
            "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1", "train.threads=1",
            "train.vis_every=0", "w_task=1", "kd.response.weight=0"]
    import subprocess
    import sys

    from tests.faults._helpers import ENTRY, Result, child_env

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, resource.RLIM_INFINITY))

    p = subprocess.run([sys.executable, "-m", ENTRY["compress"], *argv], capture_output=True,
                       text=True, cwd=REPO, env=child_env(), timeout=300, preexec_fn=limit,
                       check=False)
    line = error_line(Result(p.returncode, p.stdout, p.stderr))
    assert ".pt" in line and "cannot write" in line and "untouched" in line, line
    assert not list(out.rglob("*.pt")) and not temps(out)
    record("failed_writes", "console train, first checkpoint (kernel EFBIG)")


# ---------------------------------------------------------------- deploy (export)


def _export_cfg():
    from deploy.pipeline import ExportConfig

    return ExportConfig(threads=1, val_size=4, overwrite=True)


@pytest.fixture
def exported(tmp_path):
    if not command_available("compress", "export"):
        pytest.skip("`compress export`: command not available yet")
    from compress.data import SYNTHETIC_CLASSES
    from compress.models import create_model, save_checkpoint
    from deploy.pipeline import export_checkpoint
    from tests.conftest import tiny_spec

    spec = tiny_spec(class_names=list(SYNTHETIC_CLASSES))
    ckpt = save_checkpoint(tmp_path / "best.pt", create_model(spec), spec)
    out = tmp_path / "export"
    export_checkpoint(ckpt, out, _export_cfg())
    return ckpt, out, {p.name: sha(p) for p in out.iterdir()}


def _fail_onnx(monkeypatch):
    import onnx

    real = onnx.save

    def save(proto, f, *a, **kw):
        real(proto, f, *a, **kw)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(onnx, "save", save)


def _fail_manifest(monkeypatch):
    import deploy.manifest

    def write_manifest(directory, manifest):
        (Path(directory) / "manifest.json").write_text('{"format": "segcompress-exp')
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(deploy.manifest, "write_manifest", write_manifest)


@pytest.mark.parametrize("step", ["onnx", "manifest"])
def test_export_failing_half_way_keeps_the_previous_export(step, exported, monkeypatch):
    """Re-exporting over a good export dir (--overwrite) runs out of space half-way
    through the ONNX file / the manifest: the old export is untouched, nothing partial."""
    from deploy.pipeline import export_checkpoint

    ckpt, out, before = exported
    (_fail_onnx if step == "onnx" else _fail_manifest)(monkeypatch)
    with pytest.raises(OSError):
        export_checkpoint(ckpt, out, _export_cfg())
    assert {p.name: sha(p) for p in out.iterdir()} == before
    assert not temps(out.parent), temps(out.parent)
    record("failed_writes", f"export {step} over a previous export")


@pytest.mark.parametrize("step", ["onnx", "manifest"])
def test_export_failing_half_way_leaves_no_artifact(step, exported, tmp_path, monkeypatch):
    from deploy.pipeline import export_checkpoint

    ckpt, _, _ = exported
    fresh = tmp_path / "fresh"
    (_fail_onnx if step == "onnx" else _fail_manifest)(monkeypatch)
    with pytest.raises(OSError):
        export_checkpoint(ckpt, fresh, _export_cfg())
    left = [p for p in fresh.rglob("*")] if fresh.exists() else []
    assert not left, left
    assert not temps(tmp_path)
    record("failed_writes", f"export {step}, fresh dir")
