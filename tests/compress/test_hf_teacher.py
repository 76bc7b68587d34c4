"""Hugging Face transformers teachers (``teacher.hf``, ``compress eval DIR``,
``pseudo-label --teacher DIR``): a tiny random SegFormer saved with ``save_pretrained``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

os.environ["HF_HUB_OFFLINE"] = "1"  # never the network, even by mistake
transformers = pytest.importorskip(
    "transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from compress.config import ConfigError, load_config
from compress.data import SYNTHETIC_CLASSES, normalize
from compress.distill import Teacher, load_teacher
from compress.errors import ModelError
from compress.hf import load_hf_model, processor_settings
from compress.models import make_spec
from compress.pseudo import Ensemble
from segcompress.cli import app
from tests.conftest import REPO

runner = CliRunner()


def segformer_folder(folder: Path, names=SYNTHETIC_CLASSES, size=64) -> Path:
    """A tiny random SegFormer (4 stages: strides 4..32) and its image processor."""
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1],
                          sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 24, 32],
                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
                          num_labels=len(names), id2label=dict(enumerate(names)),
                          label2id={n: i for i, n in enumerate(names)})
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return segformer_folder(tmp_path_factory.mktemp("hf") / "segformer")


@pytest.fixture(scope="module")
def m2f_dir(tmp_path_factory) -> Path:
    """A tiny random Mask2Former (Swin backbone, 8 queries) and its image processor."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    names = SYNTHETIC_CLASSES
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32,
                            hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
                            num_queries=8, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=1, num_labels=len(names),
                            id2label=dict(enumerate(names)),
                            label2id={n: i for i, n in enumerate(names)})
    folder = tmp_path_factory.mktemp("hf") / "mask2former"
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_mask2former_gives_its_semantic_map_as_logits(m2f_dir):
    """Issue 23: Mask2Former in semantic mode: softmax(class queries, no-object dropped)
    times sigmoid(mask queries), summed over queries (transformers'
    post_process_semantic_segmentation), upsampled; its log is the logits."""
    model, spec = load_hf_model(m2f_dir, levels=["stride8", "stride16"])
    assert spec.arch == "Mask2FormerForUniversalSegmentation" and spec.classes == 5
    assert spec.class_names == SYNTHETIC_CLASSES and spec.input_size == [64, 64]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model.forward_taps(x)
        out = model.model(pixel_values=x, return_dict=True)
    by_hand = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1],
                           out.masks_queries_logits.sigmoid())
    by_hand = F.interpolate(by_hand.clamp_min(1e-6).log(), size=(64, 64), mode="bilinear",
                            align_corners=False)
    assert logits.shape == (2, 5, 64, 64) and torch.allclose(logits, by_hand, atol=1e-6)
    assert set(feats) >= {"stride4", "stride8", "stride16", "stride32"}
    assert feats["stride8"].shape[-2:] == (8, 8)


def test_distill_through_the_cli_with_a_mask2former_teacher(tmp_path, m2f_dir):
    out = tmp_path / "runs"
    r = runner.invoke(app, [
        "distill", "-c", str(REPO / "configs" / "quickstart.yaml"), "-q",
        f"output_dir={out}", "data.size=[64,64]", "data.synthetic_length=8",
        "data.synthetic_val_length=4", "data.batch_size=4",
        "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1", "train.vis_every=0",
        "train.threads=1", "teacher.checkpoint=null", "teacher.model=null",
        "teacher.train_epochs=0", f"teacher.hf={m2f_dir}", "teacher.allow_weak=true"])
    assert r.exit_code == 0, r.output
    run = Path(r.output.strip().splitlines()[-1].removeprefix("run dir: "))
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["train_kd"]) > 0
    assert "Mask2FormerForUniversalSegmentation, 5 classes" in (run / "train.log").read_text()


def _edit_json(folder: Path, name: str, **changes) -> None:
    p = folder / name
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


def test_adapter_logits_are_the_models_own_upsampled(hf_dir):
    """(a) the adapter = SegFormer's 1/4-resolution logits upsampled (bilinear) to the
    input, for the same normalised input; the spec's normalisation is the processor's."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    model, spec = load_hf_model(hf_dir)
    ref = SegformerForSemanticSegmentation.from_pretrained(hf_dir).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = ref(pixel_values=x).logits
        want = F.interpolate(raw, size=(64, 64), mode="bilinear", align_corners=False)
        got = model(x)
    assert raw.shape[-2:] == (16, 16) and got.shape == (2, 5, 64, 64)
    torch.testing.assert_close(got, want)
    assert spec.input_size == [64, 64] and spec.classes == 5
    # the toolkit's normalisation of a uint8 image == the processor's pixel_values
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    theirs = SegformerImageProcessor.from_pretrained(hf_dir)(images=img, return_tensors="pt")
    ours = normalize(img, spec.mean, spec.std)
    np.testing.assert_allclose(ours, theirs["pixel_values"][0].numpy(), atol=2e-2)
    # the Teacher wrapper: student normalisation and size in, logits at the student's size
    s_spec = make_spec(arch="Unet", encoder="tu-efficientnet_lite0", classes=5,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(96, 96))
    teacher = Teacher(model, spec, s_spec, levels=["stride8", "stride32"])
    xs = torch.randn(1, 3, 96, 96)
    logits, feats = teacher(xs)
    assert logits.shape == (1, 5, 96, 96)
    assert feats["stride8"].shape == (1, 16, 8, 8) and feats["stride32"].shape == (1, 32, 2, 2)
    xt = F.interpolate((xs * 0.25 + 0.5 - torch.tensor(spec.mean).view(1, 3, 1, 1))
                       / torch.tensor(spec.std).view(1, 3, 1, 1), size=(64, 64),
                       mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, F.interpolate(model(xt), size=(96, 96), mode="bilinear",
                                                     align_corners=False), atol=1e-4, rtol=1e-4)


def test_processor_in_pixel_units(tmp_path):
    """mean/std given on 0..255 pixels (do_rescale false) are the toolkit's [0, 1] ones."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"do_rescale": False, "image_mean": [123.675, 116.28, 103.53],
         "image_std": [58.395, 57.12, 57.375], "size": {"shortest_edge": 512}}))
    mean, std, size = processor_settings(tmp_path)
    np.testing.assert_allclose(mean, [0.485, 0.456, 0.406], atol=1e-6)
    np.testing.assert_allclose(std, [0.229, 0.224, 0.225], atol=1e-6)
    assert size is None  # no fixed height/width: the caller's size


def test_class_names_come_from_id2label(tmp_path, hf_dir):
    """(d) names from config.id2label; transformers' default LABEL_i are unknown names."""
    _, spec = load_hf_model(hf_dir)
    assert spec.class_names == SYNTHETIC_CLASSES and spec.ignore_index == 255
    plain = segformer_folder(tmp_path / "plain", names=[f"LABEL_{i}" for i in range(3)])
    assert load_hf_model(plain)[1].class_names == ["class_0", "class_1", "class_2"]
    cfg = load_config(None, ["teacher.hf=" + str(hf_dir), "kd.response.weight=1"])
    s_spec = make_spec(arch="Unet", encoder="tu-efficientnet_lite0", classes=5,
                       class_names=["a", "b", "c", "d", "e"], input_size=(64, 64))
    teacher, t_spec = load_teacher(cfg, s_spec, [], "cpu")
    assert t_spec.class_names == SYNTHETIC_CLASSES and teacher.spec is t_spec


def test_distill_through_the_cli_with_an_hf_teacher(tmp_path, hf_dir):
    """(b) ``compress distill`` with teacher.hf: response and feature KD (SegFormer's
    stages as stride8 / stride16) run, best.pt is written; then eval and pseudo-label take
    the folder too."""
    out = tmp_path / "runs"
    args = ["distill", "-c", str(REPO / "configs" / "quickstart.yaml"), "-q",
            f"output_dir={out}", "data.size=[64,64]", "data.synthetic_length=8",
            "data.synthetic_val_length=4", "data.batch_size=4",
            "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1", "train.vis_every=0",
            "train.threads=1", "teacher.checkpoint=null", "teacher.model=null",
            "teacher.train_epochs=0", f"teacher.hf={hf_dir}", "teacher.allow_weak=true",
            "kd.feature.weight=0.5", "kd.feature.levels=[stride8,stride16]"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    run = Path(r.output.strip().splitlines()[-1].removeprefix("run dir: "))
    assert (run / "checkpoints" / "best.pt").is_file()
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["train_kd"]) > 0 and float(row["train_feat"]) > 0
    r = runner.invoke(app, ["eval", str(hf_dir), "--data", "unused", "--kind", "synthetic",
                            "--split", "val", "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert list(result["per_class_iou"]) == SYNTHETIC_CLASSES and result["size"] == [64, 64]
    ens = Ensemble([hf_dir], torch.device("cpu"))
    probs = ens.probs(np.zeros((40, 50, 3), np.uint8))
    assert ens.class_names == SYNTHETIC_CLASSES and probs.shape == (5, 40, 50)


def test_trust_remote_code_stays_false(monkeypatch, hf_dir):
    """(c) every load passes trust_remote_code=False and local_files_only=True."""
    calls = []
    auto = transformers.AutoModelForSemanticSegmentation
    original = auto.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    load_hf_model(hf_dir)
    assert calls and all(c["trust_remote_code"] is False and c["local_files_only"] is True
                         for c in calls)


def test_remote_code_is_refused_and_never_imported(tmp_path, hf_dir):
    """(c) a config.json naming its own code (auto_map) is refused; the module never runs."""
    folder = tmp_path / "remote"
    shutil.copytree(hf_dir, folder)
    marker = tmp_path / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    _edit_json(folder, "config.json", auto_map={
        "AutoModelForSemanticSegmentation": "modeling_evil.EvilModel"})
    with pytest.raises(ModelError, match="auto_map.*trust_remote_code=False"):
        load_hf_model(folder)
    assert not marker.exists()


def test_refusals_are_one_line(monkeypatch, tmp_path, hf_dir):
    """(c) no folder / a hub id not in the cache / no transformers / no processor / a
    universal-segmentation model / missing weights / a level SegFormer does not give."""
    with pytest.raises(ModelError, match="teacher.hf .*folder not found"):
        load_hf_model(tmp_path / "nothing")
    with pytest.raises(ModelError, match="not in the Hugging Face cache; nothing is downloaded"):
        load_hf_model("nvidia/segformer-b0-finetuned-ade-512-512")
    no_proc = tmp_path / "no_proc"
    shutil.copytree(hf_dir, no_proc)
    (no_proc / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="no preprocessor_config.json"):
        load_hf_model(no_proc)
    one = tmp_path / "oneformer"
    shutil.copytree(hf_dir, one)
    _edit_json(one, "config.json", model_type="oneformer")
    with pytest.raises(ModelError, match="'oneformer' is not a semantic-segmentation model.*"
                                         "or mask2former in semantic mode"):
        load_hf_model(one)
    from safetensors.torch import load_file, save_file

    holes = tmp_path / "holes"
    shutil.copytree(hf_dir, holes)
    state = load_file(holes / "model.safetensors")
    save_file({k: v for k, v in state.items() if "decode_head.classifier" not in k},
              holes / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="weights missing.*allow_missing_keys"):
        load_hf_model(holes)
    with pytest.raises(ModelError, match="feature level.*decoder.*stride4, stride8, stride16, "
                                         "stride32.*kd.feature.levels"):
        load_hf_model(hf_dir, levels=["decoder"])
    with pytest.raises(ConfigError, match="drop teacher.checkpoint"):
        load_config(None, [f"teacher.hf={hf_dir}", "teacher.checkpoint=t.pt"])
    monkeypatch.setitem(sys.modules, "transformers", None)  # not installed
    with pytest.raises(ModelError, match=r"teacher.hf needs the transformers package: "
                                         r"pip install -e '\.\[hf\]'"):
        load_hf_model(hf_dir)
