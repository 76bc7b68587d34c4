"""Shared fixtures: tiny models and tiny synthetic recipes so tests run in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path


def _has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# OpenVINO 2026.4's AMX INT8 kernels segfault in infer() on the suite's tiny multi-task
# INT8 IR (tests/deploy/test_multitask_export.py; reproduced outside pytest with
# openvino.Core().compile_model(...).infer, batch 1 and 2; fine with AVX-512 VNNI). oneDNN
# reads this once, when OpenVINO first compiles, so it is set before anything imports it:
# the tests then run the same graphs on the VNNI kernels (docs/deploy.md, "Known issues").
if _has_amx():
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")

import pytest
import torch

from compress.config import RunConfig, load_config
from compress.models import create_model, make_spec, save_checkpoint
from compress.spec import ModelSpec

# one thread: the suite runs beside other work on small machines; tiny models gain little
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"

TINY_DECODER = [16, 16, 8, 8, 8]


def check_shipped_checkpoint(path: Path, sha256: str, size: tuple[int, int],
                             classes: int = 11) -> None:
    """A zoo file as shipped: its listed sha256, no optimizer state, float16 weights, and
    it loads with load_model (weights_only) and maps a ``size`` image to ``classes``
    logits of that size."""
    import hashlib

    from compress.models import load_model

    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    raw = torch.load(path, weights_only=True)
    assert "optimizer" not in raw
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()
               if v.is_floating_point())
    model, spec = load_model(path, return_spec=True)
    assert spec.classes == classes and list(spec.input_size) == list(size)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, classes, *size) and torch.isfinite(out).all()


def tiny_spec(classes: int = 5, size=(64, 64), encoder: str = "tu-efficientnet_lite0", *,
              synthetic_names: bool = False, **kw) -> ModelSpec:
    """The one tiny model spec of the suite (a Unet on EfficientNet-Lite0 with a slim
    decoder, 64x64); ``synthetic_names`` names 5 classes as the synthetic dataset does.
    Other ``make_spec`` arguments (``arch``, ``decoder_channels``...) pass through."""
    if synthetic_names and classes == 5:
        from compress.data import SYNTHETIC_CLASSES

        kw.setdefault("class_names", list(SYNTHETIC_CLASSES))
    return make_spec(arch=kw.pop("arch", "Unet"), encoder=encoder, classes=classes,
                     decoder_channels=kw.pop("decoder_channels", TINY_DECODER),
                     input_size=size, **kw)


def tiny_config(tmp_path: Path, overrides: list[str] | None = None) -> RunConfig:
    """A synthetic recipe that trains in a couple of seconds."""
    base = [
        "name=tiny", f"output_dir={tmp_path / 'runs'}", "data.size=[64,64]",
        "data.synthetic_length=16", "data.synthetic_val_length=8", "data.batch_size=4",
        "model.decoder_channels=[16,16,8,8,8]", "train.epochs=2", "train.lr=0.003",
        "train.warmup_epochs=0", "train.vis_every=0",
    ]
    return load_config(None, base + (overrides or []))


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    spec = tiny_spec()
    model = create_model(spec)
    return save_checkpoint(tmp_path / "tiny.pt", model, spec, metrics=None, epoch=0)


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory) -> Path:
    """A small teacher trained for a few epochs on synthetic data (session-wide)."""
    from compress.train import fit

    tmp = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config(tmp, ["name=teacher", "train.epochs=3", "model.decoder_channels=[32,16,16,8,8]"])
    run = fit(cfg, show_progress=False).run_dir
    return run / "checkpoints" / "best.pt"


def interrupted_then_resumed(cfg, runs: Path, epoch: int = 1, step: int = 5,
                             on_interrupt=None) -> Path:
    """Run ``cfg`` until a KeyboardInterrupt at (``epoch``, ``step``), resume it from its
    run dir under ``runs`` to the end, and return that run dir (``on_interrupt(run)`` is
    called in between, to check what the interrupted run left)."""
    from compress.train import fit, step_hook

    def stop(loss, e, s):
        if e == epoch and s == step:
            raise KeyboardInterrupt
        return loss

    with step_hook(stop), pytest.raises(KeyboardInterrupt):
        fit(cfg, show_progress=False)
    run = next(runs.iterdir())
    if on_interrupt is not None:
        on_interrupt(run)
    fit(cfg, resume=run, show_progress=False)
    return run
