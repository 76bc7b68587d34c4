"""Fixtures for deploy tests: a tiny student trained for a few seconds on synthetic data,
so its logits are decisive enough for agreement figures to mean something."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.config import DataConfig
from compress.data import build_split
from compress.models import create_model, save_checkpoint
from compress.spec import ModelSpec
from tests.conftest import tiny_spec as base_tiny_spec

SIZE = (64, 64)
TINY = {"arch": "Unet", "encoder": "tu-mobilenetv3_small_050", "decoder_channels": [16, 8, 8, 8, 8]}


# deploy's tiny student: a MobileNetV3 encoder, named synthetic classes
tiny_spec = partial(base_tiny_spec, size=SIZE, encoder=TINY["encoder"],
                    decoder_channels=TINY["decoder_channels"], synthetic_names=True)


def synthetic_batches(spec: ModelSpec, split: str = "val", n: int = 8, batch: int = 4):
    """``[(images float32 [B, 3, H, W], masks int64 [B, H, W])]`` from the synthetic set."""
    cfg = DataConfig(kind="synthetic", size=SIZE, synthetic_length=n, synthetic_val_length=n)
    ds = build_split(cfg, split, spec.mean, spec.std, spec.ignore_index)
    items = [ds[i] for i in range(n)]
    return [(np.stack([it["image"].numpy() for it in items[i:i + batch]]),
             np.stack([it["mask"].numpy() for it in items[i:i + batch]]))
            for i in range(0, n, batch)]


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A tiny Unet whose segmentation head is fitted (a linear probe on its random
    encoder/decoder features) to 16 synthetic scenes: about 85% pixel accuracy in a few
    seconds on a busy CPU, so its logits are decisive where an untrained model's tie."""
    torch.manual_seed(0)
    spec = tiny_spec()
    model = create_model(spec).eval()
    cfg = DataConfig(kind="synthetic", size=SIZE, synthetic_length=16, synthetic_val_length=8)
    ds = build_split(cfg, "train", spec.mean, spec.std, spec.ignore_index)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    with torch.no_grad():
        feats = model.decoder(model.encoder(images))
    head = model.segmentation_head
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(head(feats), masks, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, model, spec, metrics={"loss": loss.item()}, epoch=1)


def run_export(ckpt, out, *extra):
    """``compress export CKPT --out OUT`` at 64x64 on 4 synthetic val images, 1 thread,
    with ``extra`` flags; the CliRunner result (``exception`` holds a refusal)."""
    from typer.testing import CliRunner

    from segcompress.cli import app

    return CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out), "--size", "64x64",
                                    "--val-size", "4", "--threads", "1", *extra])
