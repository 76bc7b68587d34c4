"""Bad input, each answered by name.

One table of malformed inputs across every command (``compress train | distill | eval |
export | pseudo-label | compare``, ``bench flops | latency | report``). For each row:

* the command exits non-zero with ONE line ``error: ...`` (the last line on stderr) that
  names the file, key or value and says what was expected;
* no Python traceback (unless ``--debug``: see :func:`test_debug_shows_the_traceback`);
* no result file appears (no ``.pt``/``.onnx``/``.json``/``.csv``... nor temp files) and
  files that were there before are untouched;
* the code-carrying checkpoint never runs its payload (its marker file never appears).

Every row runs in-process through the same ``main()`` the console script runs (fast); a
representative subset also runs as a real ``python -m ...`` subprocess in the default
suite, the rest of the rows as subprocesses under ``-m slow``. Rows of commands another
package adds (``export``, ``pseudo-label``, ``compare``, ``bench``) skip with "command not
available yet" until the command exists.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.data import SYNTHETIC_CLASSES
from compress.models import create_model, save_checkpoint
from compress.spec import ModelSpec
from tests.conftest import REPO, tiny_spec
from tests.faults._helpers import (
    command_available,
    error_line,
    record,
    results_left,
    run_console,
    run_inprocess,
)

QUICK = str(REPO / "configs" / "quickstart.yaml")
TINY = ["name=bad", "data.size=[64,64]", "data.synthetic_length=8", "data.synthetic_val_length=4",
        "data.batch_size=4", "model.decoder_channels=[16,16,8,8,8]", "train.epochs=1",
        "train.threads=1", "train.vis_every=0"]
TRAIN = ["train", "-q", "-c", QUICK, *TINY, "output_dir={out}", "w_task=1", "kd.response.weight=0"]
DISTILL = ["distill", "-q", "-c", QUICK, *TINY, "output_dir={out}", "teacher.train_epochs=0",
           "teacher.checkpoint={good_ckpt}"]
EVAL = ["eval", "--out", "{out}", "--kind", "synthetic", "--data", "unused"]


# ---------------------------------------------------------------- the malformed files


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_checkpoint(path: Path, marker: Path) -> Path:
    spec = tiny_spec()
    state = create_model(spec).state_dict()
    torch.save({"format": "segcompress-checkpoint/1", "spec": spec.to_dict(), "state_dict": state,
                "extra": _Payload(marker)}, path)
    return path


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def folder_dataset(root: Path, fault: str | None = None, n: int = 2) -> Path:
    """``root/classes.txt`` + ``images/{train,val}`` + ``masks/{train,val}``, 64x64, the five
    synthetic classes; ``fault`` breaks the first val image in one way."""
    rng = np.random.default_rng(0)
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        if fault == "empty" and split == "val":
            continue
        for i in range(n):
            img = root / "images" / split / f"img{i}.png"
            mask = root / "masks" / split / f"img{i}.png"
            _png(img, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            _png(mask, rng.integers(0, 5, (64, 64), dtype=np.uint8))
    bad_img, bad_mask = root / "images" / "val" / "img0.png", root / "masks" / "val" / "img0.png"
    if fault == "no_mask":
        bad_mask.unlink()
    elif fault == "size":
        _png(bad_mask, np.zeros((32, 64), np.uint8))
    elif fault == "labels":
        _png(bad_mask, np.full((64, 64), 9, np.uint8))
    elif fault == "truncated":
        bad_img.write_bytes(bad_img.read_bytes()[:100])
    elif fault == "grey16":
        Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(bad_img)
    elif fault == "rgb_mask":
        _png(bad_mask, np.zeros((64, 64, 3), np.uint8))
    elif fault == "no_classes":
        (root / "classes.txt").unlink()
    elif fault == "empty_classes":
        (root / "classes.txt").write_text("\n\n")
    elif fault == "latin1_classes":
        (root / "classes.txt").write_bytes("caf\xe9\n".encode("latin-1") * 5)
    elif fault == "bomb":
        bomb_png(bad_img)
    return root


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A ~70-byte PNG whose header claims ``side x side`` pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _manifest(directory: Path, onnx_bytes: bytes, sha: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    from deploy.manifest import write_manifest

    write_manifest(directory, {
        "format": "segcompress-export/1", "source_checkpoint": "best.pt",
        "source_sha256": "0" * 64, "spec": tiny_spec().to_dict(),
        "artifacts": [{"file": "model.onnx", "sha256": sha, "backend": "onnxruntime",
                       "precision": "f32", "input_shape": [1, 3, 64, 64],
                       "input_dtype": "float32", "output": "logits"}]})
    return directory / "model.onnx"


@pytest.fixture(scope="session")
def bad(tmp_path_factory) -> dict[str, str]:
    """Every malformed file the table needs, made once; values are paths as strings."""
    d = tmp_path_factory.mktemp("bad_inputs")
    spec = tiny_spec()
    model = create_model(spec)
    f: dict[str, Path] = {}
    f["good_ckpt"] = save_checkpoint(d / "good.pt", model, spec, metrics=None, epoch=1)
    good_bytes = f["good_ckpt"].read_bytes()
    f["corrupt_ckpt"] = d / "corrupt.pt"
    f["corrupt_ckpt"].write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    f["truncated_ckpt"] = d / "truncated.pt"
    f["truncated_ckpt"].write_bytes(good_bytes[: len(good_bytes) // 2])
    f["text_ckpt"] = d / "notes.pt"
    f["text_ckpt"].write_text("this is not a checkpoint\n")
    f["marker"] = d / "PAYLOAD_RAN"
    f["payload_ckpt"] = payload_checkpoint(d / "payload.pt", f["marker"])
    f["plain_sd"] = d / "plain_state_dict.pt"
    torch.save(model.state_dict(), f["plain_sd"])
    f["list_ckpt"] = d / "list.pt"
    torch.save([1, 2, 3], f["list_ckpt"])
    spec3 = tiny_spec(classes=3)
    f["teacher3"] = save_checkpoint(d / "teacher_3cls.pt", create_model(spec3), spec3,
                                    metrics=None, epoch=1)
    f["best_only"] = save_checkpoint(d / "run_best" / "checkpoints" / "best.pt", model, spec,
                                     metrics=None, epoch=1)
    f["missing"] = d / "does_not_exist.pt"
    f["missing_dir"] = d / "no_such_dir"
    # run dirs for --resume
    f["not_run_dir"] = d / "not_a_run"
    f["not_run_dir"].mkdir()
    f["corrupt_run"] = d / "corrupt_run"
    (f["corrupt_run"] / "checkpoints").mkdir(parents=True)
    (f["corrupt_run"] / "config.yaml").write_text("name: x\n")
    (f["corrupt_run"] / "checkpoints" / "last.pt").write_bytes(good_bytes[:1000])
    f["payload_run"] = d / "payload_run"
    (f["payload_run"] / "checkpoints").mkdir(parents=True)
    (f["payload_run"] / "config.yaml").write_text("name: x\n")
    payload_checkpoint(f["payload_run"] / "checkpoints" / "last.pt", f["marker"])
    # exported artifacts
    f["not_onnx"] = d / "fake" / "model.onnx"
    f["not_onnx"].parent.mkdir()
    f["not_onnx"].write_text("<html>404 not found</html>\n")
    f["sha_onnx"] = _manifest(d / "export_bad_sha", b"\x08\x07" + bytes(100), "f" * 64)
    f["not_json_manifest"] = d / "export_not_json" / "model.onnx"
    f["not_json_manifest"].parent.mkdir()
    f["not_json_manifest"].write_bytes(b"\x08\x07")
    (f["not_json_manifest"].parent / "manifest.json").write_text("{not json")
    # datasets
    for fault in ("ok", "empty", "no_mask", "size", "labels", "truncated", "grey16",
                  "rgb_mask", "no_classes", "empty_classes", "latin1_classes", "bomb"):
        f[f"ds_{fault}"] = folder_dataset(d / f"ds_{fault}", None if fault == "ok" else fault)
    f["camvid_nosplit"] = d / "camvid_nosplit"
    f["camvid_nosplit"].mkdir()
    f["camvid_badlist"] = d / "camvid_badlist"
    f["camvid_badlist"].mkdir()
    (f["camvid_badlist"] / "val.txt").write_text("val/a.png\n")
    f["camvid_emptylist"] = d / "camvid_emptylist"
    f["camvid_emptylist"].mkdir()
    (f["camvid_emptylist"] / "val.txt").write_text("\n")
    f["bad_img"] = f["ds_truncated"] / "images" / "val" / "img0.png"
    f["nomask_img"] = f["ds_no_mask"] / "images" / "val" / "img0.png"
    f["size_mask"] = f["ds_size"] / "masks" / "val" / "img0.png"
    f["labels_mask"] = f["ds_labels"] / "masks" / "val" / "img0.png"
    f["grey_img"] = f["ds_grey16"] / "images" / "val" / "img0.png"
    f["rgb_mask"] = f["ds_rgb_mask"] / "masks" / "val" / "img0.png"
    # recipes
    y = d / "yaml"
    y.mkdir()
    texts = {
        "typo_key": "train:\n  epochz: 1\n",
        "typo_top": "trian:\n  epochs: 1\n",
        "wrong_type": "train:\n  epochs: many\n",
        "bad_yaml": "train: [epochs: 1\n",
        "top_list": "- train\n- epochs\n",
        "cycle_a": "base: cycle_b.yaml\n",
        "cycle_b": "base: cycle_a.yaml\n",
        "base_missing": "base: nowhere.yaml\n",
        "base_not_str": "base: 3\n",
        "study_typo": "recipez: []\n",
        "alias_bomb": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a]\n"
                       "train: {epochs: 1}\nc: [*b, *b, *b, *b, *b, *b]\n"),
        "study_alias": "name: s\nbaseline: &b x\nrecipes: [{name: *b, runs: [r]}]\n",
        "cmap_typo": ("classes: [bg, fg]\n"
                      "map: {class_0: bg, class_1: fg, class_2: fg, class_3: fg, class_4: fgg}\n"),
    }
    for name, text in texts.items():
        f[f"y_{name}"] = y / f"{name}.yaml"
        f[f"y_{name}"].write_text(text)
    f["y_latin1"] = y / "latin1.yaml"
    f["y_latin1"].write_bytes("name: caf\xe9\n".encode("latin-1"))
    f["y_missing"] = y / "no_such_recipe.yaml"
    nan_model = create_model(spec)
    with torch.no_grad():
        nan_model.segmentation_head[0].weight.fill_(float("nan"))
    f["nan_ckpt"] = save_checkpoint(d / "nan.pt", nan_model, spec, metrics=None, epoch=1)
    from deploy.export import export_onnx

    (d / "lying").mkdir()
    f["onnx_wrong_classes"] = export_onnx(create_model(spec3), d / "lying" / "model.onnx", spec,
                                          size=(64, 64), simplify=False)
    _bent_onnx_files(f, d)
    f["bomb_img"] = f["ds_bomb"] / "images" / "val" / "img0.png"
    f["quick"] = Path(QUICK)
    _round3_files(f, d)
    return {k: str(v) for k, v in f.items()}


def _bent_onnx_files(f: dict, d: Path) -> None:
    """ONNX files whose graph contradicts their embedded spec, or that cannot load: a static
    export at another size, rank-3 and NHWC inputs, weights in a missing external file;
    and an OpenVINO IR whose graph has another class count than its spec."""
    import onnx
    from onnx import TensorProto, helper

    from deploy.metadata import SPEC_METADATA_KEY

    lying = onnx.load(f["onnx_wrong_classes"])
    spec_json = next(p.value for p in lying.metadata_props if p.key == SPEC_METADATA_KEY)

    def with_spec(model, path: Path, **save) -> str:
        entry = model.metadata_props.add()
        entry.key, entry.value = SPEC_METADATA_KEY, spec_json
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path), **save)
        return str(path)

    def graph(in_shape, out_shape, op="Identity", **attrs):
        x = helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)
        node = helper.make_node(op, ["images"], ["logits"], **attrs)
        return helper.make_model(helper.make_graph([node], "bent", [x], [y]),
                                 opset_imports=[helper.make_opsetid("", 17)])

    # a static export at 96x96 whose embedded spec was edited to say 64x64
    from compress.models import create_model
    from deploy.export import export_onnx

    spec = ModelSpec.from_dict(json.loads(spec_json))
    (d / "other_size").mkdir()
    static = export_onnx(create_model(spec), d / "other_size" / "tmp.onnx", spec,
                         size=(96, 96), simplify=False)
    other = onnx.load(str(static))
    static.unlink()
    for p in other.metadata_props:
        if p.key == SPEC_METADATA_KEY:
            p.value = json.dumps({**json.loads(p.value), "input_size": [64, 64]})
    f["onnx_other_size"] = d / "other_size" / "model.onnx"
    onnx.save(other, str(f["onnx_other_size"]))
    f["onnx_rank3"] = with_spec(graph([1, 64, 64], [1, 64, 64]), d / "rank3" / "model.onnx")
    f["onnx_nhwc"] = with_spec(graph([1, 64, 64, 3], [1, 64, 64], "ReduceMax", axes=[3],
                                     keepdims=0), d / "nhwc" / "model.onnx")
    ext = onnx.load(f["onnx_wrong_classes"])
    f["onnx_external"] = d / "external" / "model.onnx"
    f["onnx_external"].parent.mkdir()
    onnx.save(ext, str(f["onnx_external"]), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (d / "external" / "weights.bin").unlink()
    from deploy.backends.openvino import convert_to_openvino

    f["ov_wrong_classes"] = d / "lying_ov" / "model.xml"
    f["ov_wrong_classes"].parent.mkdir()
    convert_to_openvino(f["onnx_wrong_classes"], f["ov_wrong_classes"], spec=ModelSpec.from_dict(json.loads(spec_json)))


def _round3_files(f: dict, d: Path) -> None:
    """Round 3 (trust and wrong results): checkpoints whose spec names an encoder or a
    kwarg that would reach the network or a file, a checkpoint with named classes (and one
    whose ignore_index is a class), a data set whose classes.txt is reversed, an ONNX
    with NaN weights, an empty recipe."""
    from dataclasses import replace

    import onnx
    from onnx import numpy_helper

    from deploy.export import export_onnx

    spec = tiny_spec()
    state_of = create_model(spec)
    for key, changes in {
        "hf_hub_ckpt": {"encoder": "tu-hf-hub:timm/efficientnet_lite0"},
        "local_dir_ckpt": {"encoder": f"tu-local-dir:{d / 'no_such_model'}"},
        "ckpt_path_kwarg": {"kwargs": {"checkpoint_path": "/etc/hostname"}},
        "cfg_overlay_kwarg": {"kwargs": {"pretrained_cfg_overlay": {"file": "/etc/hostname"}}},
    }.items():
        f[key] = save_checkpoint(d / f"{key}.pt", state_of, replace(spec, **changes), epoch=1)
    named = tiny_spec(synthetic_names=True)
    f["named_ckpt"] = save_checkpoint(d / "named.pt", create_model(named), named, epoch=1)
    f["ignore_class_ckpt"] = save_checkpoint(d / "ignore1.pt", create_model(named),
                                             replace(named, ignore_index=1), epoch=1)
    f["ds_reversed"] = folder_dataset(d / "ds_reversed")
    (f["ds_reversed"] / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES[::-1]) + "\n")
    (d / "nan_onnx").mkdir()
    path = export_onnx(create_model(named), d / "nan_onnx" / "model.onnx", named, size=(64, 64),
                       simplify=False)
    proto = onnx.load(str(path))
    init = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    init.CopyFrom(numpy_helper.from_array(
        np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name))
    onnx.save(proto, str(path))
    f["nan_onnx"] = path
    f["y_empty"] = d / "yaml" / "empty.yaml"
    f["y_empty"].write_text("# nothing here yet\n")


# ---------------------------------------------------------------- the table


@dataclass
class Row:
    id: str
    argv: list[str]
    expect: tuple[str, ...]  # each must appear in the error line (case-insensitive)
    prog: str = "compress"
    console: bool = False  # also through the real console entry in the default suite
    xfail: str | None = None  # a known gap in another package's command (reported)
    files: dict = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.argv[0]


ROWS = [
    # ---- recipes and overrides (train / distill)
    Row("config-unknown-key-file", ["train", "-c", "{y_typo_key}"],
        ("{y_typo_key}", "unknown key 'train.epochz'"), console=True),
    Row("config-unknown-top-key", ["train", "-c", "{y_typo_top}"], ("{y_typo_top}", "'trian'")),
    Row("config-wrong-type-file", ["train", "-c", "{y_wrong_type}"],
        ("{y_wrong_type}", "train.epochs", "integer", "'many'")),
    Row("override-unknown-key", [*TRAIN, "trian.epochs=1"], ("unknown key 'trian'",)),
    Row("override-mistyped-nested", [*TRAIN, "train.learning_rate=0.1"],
        ("unknown key 'train.learning_rate'",)),
    Row("override-wrong-type", [*TRAIN, "train.epochs=abc"], ("train.epochs", "integer", "abc")),
    Row("override-negative-lr", [*TRAIN, "train.lr=-1"], ("train.lr", "greater than 0", "-1")),
    Row("override-negative-temperature", [*DISTILL, "kd.response.temperature=-2"],
        ("kd.response.temperature", "greater than 0", "-2")),
    Row("override-all-weights-zero", [*TRAIN, "w_task=0"], ("w_task", "0", "nothing to train on")),
    Row("override-size-not-32", [*TRAIN, "data.size=[100,100]"],
        ("data.size", "multiples of 32", "100")),
    Row("override-batch-zero", [*TRAIN, "data.batch_size=0"], ("data.batch_size", "greater than")),
    Row("override-scale-range", [*TRAIN, "data.scale_range=[2,1]"],
        ("data.scale_range", "min <= max")),
    Row("override-bad-schedule", [*TRAIN, "train.schedule=linear"],
        ("train.schedule", "cosine", "linear")),
    Row("override-bad-data-kind", [*TRAIN, "data.kind=imagenet"],
        ("data.kind", "synthetic", "imagenet")),
    Row("override-not-key-value", [*TRAIN, "train.epochs"], ("train.epochs", "key.subkey=value")),
    Row("override-into-scalar", [*TRAIN, "train.epochs.max=3"], ("train.epochs.max", "not a section")),
    Row("config-missing-file", ["train", "-c", "{y_missing}"], ("{y_missing}", "not found")),
    Row("config-bad-yaml", ["train", "-c", "{y_bad_yaml}"], ("{y_bad_yaml}", "not valid YAML")),
    Row("config-top-level-list", ["train", "-c", "{y_top_list}"], ("{y_top_list}", "mapping")),
    Row("config-base-cycle", ["train", "-c", "{y_cycle_a}"], ("cycle",)),
    Row("config-base-missing", ["train", "-c", "{y_base_missing}"], ("nowhere.yaml", "not found")),
    Row("config-base-not-path", ["train", "-c", "{y_base_not_str}"], ("{y_base_not_str}", "'base'")),
    Row("model-unknown-arch", [*TRAIN, "model.arch=UNetPlusPlusPlus"],
        ("UNetPlusPlusPlus", "valid:")),
    Row("model-unknown-encoder", [*TRAIN, "model.encoder=tu-no_such_net"],
        ("tu-no_such_net", "cannot build")),
    Row("model-bad-factory", [*TRAIN, "model.factory=nofactory"],
        ("nofactory", "package.module:function")),
    Row("class-names-count", [*TRAIN, "class_names=[a,b]"], ("class_names", "2", "5 classes")),
    Row("train-with-kd-weights", ["train", "-c", QUICK, *TINY, "output_dir={out}"],
        ("KD weights", "compress distill")),
    Row("distill-without-kd", [*DISTILL, "kd.response.weight=0", "w_task=1"],
        ("no kd", "kd.response.weight")),
    Row("train-device-cuda", [*TRAIN, "train.device=cuda"], ("'cuda'", "no CUDA GPU")),
    Row("feature-level-unknown", [*DISTILL, "kd.feature.weight=1", "kd.feature.levels=[stride3]"],
        ("stride3", "valid:")),
    Row("class-map-wrong-shape", [*DISTILL, "kd.class_map=[[1,0],[0,1]]"],
        ("kd.class_map", "[2, 2]", "expected [5, 5]")),
    # ---- data
    Row("data-camvid-root-missing", [*TRAIN, "data.kind=camvid", "data.root={missing_dir}"],
        ("{missing_dir}", "not found"), console=True),
    Row("data-camvid-no-split", [*TRAIN, "data.kind=camvid", "data.root={camvid_nosplit}"],
        ("{camvid_nosplit}", "val.txt", "val/")),
    Row("data-camvid-bad-list-line", [*TRAIN, "data.kind=camvid", "data.root={camvid_badlist}"],
        ("val.txt:1", "image-path mask-path")),
    Row("data-camvid-empty-split", [*TRAIN, "data.kind=camvid", "data.root={camvid_emptylist}"],
        ("{camvid_emptylist}", "no images")),
    Row("data-folder-root-missing", [*TRAIN, "data.kind=folder", "data.root={missing_dir}"],
        ("{missing_dir}", "not found")),
    Row("data-folder-no-classes", [*TRAIN, "data.kind=folder", "data.root={ds_no_classes}"],
        ("classes.txt", "one class name per line")),
    Row("data-folder-empty-split", [*TRAIN, "data.kind=folder", "data.root={ds_empty}"],
        ("val", "no images")),
    Row("data-root-not-given", [*TRAIN, "data.kind=folder"], ("folder", "data.root")),
    Row("train-image-without-mask", [*TRAIN, "data.kind=folder", "data.root={ds_no_mask}"],
        ("{nomask_img}", "mask missing")),
    Row("eval-image-without-mask", ["eval", "{good_ckpt}", "--data", "{ds_no_mask}", "--kind",
                                    "folder", "--out", "{out}"], ("{nomask_img}", "mask missing")),
    Row("eval-size-mismatch", ["eval", "{good_ckpt}", "--data", "{ds_size}", "--kind", "folder",
                               "--out", "{out}"], ("{size_mask}", "64x32", "!= image size 64x64")),
    Row("train-size-mismatch", [*TRAIN, "data.kind=folder", "data.root={ds_size}",
                                "data.train_split=val", "data.batch_size=2"], ("{size_mask}", "mask size")),
    Row("eval-label-out-of-range", ["eval", "{good_ckpt}", "--data", "{ds_labels}", "--kind",
                                    "folder", "--out", "{out}"],
        ("{labels_mask}", "[9]", "0..4", "ignore index")),
    Row("eval-truncated-png", ["eval", "{good_ckpt}", "--data", "{ds_truncated}", "--kind",
                               "folder", "--out", "{out}"], ("{bad_img}", "unreadable image")),
    Row("eval-grey16-image", ["eval", "{good_ckpt}", "--data", "{ds_grey16}", "--kind", "folder",
                              "--out", "{out}"], ("{grey_img}", "RGB image is expected")),
    Row("eval-rgb-mask", ["eval", "{good_ckpt}", "--data", "{ds_rgb_mask}", "--kind", "folder",
                          "--out", "{out}"], ("{rgb_mask}", "single-channel", "RGB")),
    Row("eval-data-missing", ["eval", "{good_ckpt}", "--data", "{missing_dir}", "--out", "{out}"],
        ("{missing_dir}", "not found")),
    Row("eval-unknown-kind", ["eval", "{good_ckpt}", "--data", "{ds_ok}", "--kind", "imagenet",
                              "--out", "{out}"], ("--kind", "imagenet", "synthetic")),
    # ---- checkpoints
    Row("eval-checkpoint-missing", [*EVAL, "{missing}"], ("{missing}", "not found")),
    Row("eval-corrupt-checkpoint", [*EVAL, "{corrupt_ckpt}"], ("{corrupt_ckpt}", "corrupt")),
    Row("eval-truncated-checkpoint", [*EVAL, "{truncated_ckpt}"],
        ("{truncated_ckpt}", "truncated")),
    Row("eval-text-as-checkpoint", [*EVAL, "{text_ckpt}"], ("{text_ckpt}", "corrupt")),
    Row("eval-list-as-checkpoint", [*EVAL, "{list_ckpt}"], ("{list_ckpt}", "not a checkpoint")),
    Row("eval-payload-checkpoint", [*EVAL, "{payload_ckpt}"],
        ("{payload_ckpt}", "refused", "not executed"), console=True),
    Row("eval-plain-state-dict", [*EVAL, "{plain_sd}"], ("{plain_sd}", "--arch", "--classes")),
    Row("eval-plain-state-dict-partial-flags", [*EVAL, "{plain_sd}", "--arch", "Unet"],
        ("--arch", "--encoder", "--classes")),
    Row("eval-class-count-mismatch", [*EVAL, "{teacher3}"], ("{teacher3}", "3 classes", "5")),
    Row("eval-size-not-32", [*EVAL, "{good_ckpt}", "--size", "100x96"],
        ("100x96", "multiples of 32"), console=True),
    Row("eval-size-garbage", [*EVAL, "{good_ckpt}", "--size", "big"], ("big", "HxW")),
    Row("eval-device-cuda", [*EVAL, "{good_ckpt}", "--device", "cuda"], ("'cuda'", "no CUDA GPU"),
        console=True),
    Row("distill-teacher-missing", [*DISTILL, "teacher.checkpoint={missing}"],
        ("teacher.checkpoint", "{missing}", "not found")),
    Row("distill-teacher-corrupt", [*DISTILL, "teacher.checkpoint={corrupt_ckpt}"],
        ("{corrupt_ckpt}", "corrupt"), console=True),
    Row("distill-teacher-payload", [*DISTILL, "teacher.checkpoint={payload_ckpt}"],
        ("{payload_ckpt}", "refused")),
    Row("distill-teacher-other-classes", [*DISTILL, "teacher.checkpoint={teacher3}"],
        ("{teacher3}", "3 classes", "kd.class_map")),
    Row("distill-adapter-missing", [*DISTILL, "teacher.adapter={missing}"],
        ("teacher.adapter", "{missing}", "not found")),
    Row("distill-adapter-payload", [*DISTILL, "teacher.adapter={payload_ckpt}"],
        ("{payload_ckpt}", "refused")),
    Row("distill-adapter-nan", [*DISTILL, "teacher.adapter={nan_ckpt}"],
        ("{nan_ckpt}", "segmentation_head", "NaN")),
    Row("distill-adapter-other-shapes", [*DISTILL, "teacher.adapter={teacher3}"],
        ("{teacher3}", "segmentation_head", "shape")),
    Row("distill-class-map-typo", [*DISTILL, ("kd.class_map={{class_0: background, class_1: disc, "
                                              "class_2: box, class_3: triangle, "
                                              "class_4: {{ring: 0.5, rnig: 0.5}}}}")],
        ("kd.class_map", "'rnig'", "did you mean 'ring'")),
    Row("distill-teacher-plain-state-dict", [*DISTILL, "teacher.checkpoint={plain_sd}",
                                             "teacher.model=null"],
        ("{plain_sd}", "plain state_dict", "teacher.model")),
    Row("distill-teacher-wrong-architecture", [*DISTILL, "teacher.checkpoint={plain_sd}"],
        ("{plain_sd}", "do not fit", "tu-efficientnet_lite2", "another shape")),
    Row("resume-missing", [*TRAIN, "--resume", "{missing_dir}"], ("{missing_dir}", "nothing to resume")),
    Row("resume-not-a-run-dir", [*TRAIN, "--resume", "{not_run_dir}"],
        ("{not_run_dir}", "not a run dir")),
    Row("resume-corrupt-last", [*TRAIN, "--resume", "{corrupt_run}"], ("last.pt", "truncated")),
    Row("resume-payload-last", [*TRAIN, "--resume", "{payload_run}"], ("last.pt", "refused")),
    Row("resume-weights-only", [*TRAIN, "--resume", "{best_only}"],
        ("{best_only}", "not a run's checkpoints/last.pt")),
    Row("cli-missing-option", ["train"], ("--config", "train --help")),
    Row("cli-option-without-value", ["train", "-c", QUICK, "--resume"], ("--resume", "argument")),
    Row("cli-unknown-command", ["trian"], ("trian",)),
    Row("cli-unknown-option", ["eval", "{good_ckpt}", "--data", "x", "--flipp"], ("--flipp",)),
    # ---- deploy: compress export
    Row("export-checkpoint-missing", ["export", "{missing}", "--out", "{out}"],
        ("{missing}", "not found")),
    Row("export-corrupt-checkpoint", ["export", "{corrupt_ckpt}", "--out", "{out}"],
        ("{corrupt_ckpt}", "corrupt")),
    Row("export-payload-checkpoint", ["export", "{payload_ckpt}", "--out", "{out}"],
        ("{payload_ckpt}", "refused")),
    Row("export-plain-state-dict", ["export", "{plain_sd}", "--out", "{out}"],
        ("{plain_sd}", "state_dict")),
    Row("export-size-not-32", ["export", "{good_ckpt}", "--out", "{out}", "--size", "100x96"],
        ("100x96", "multiples of 32"), console=True),
    Row("export-trt-without-gpu", ["export", "{good_ckpt}", "--out", "{out}", "--trt"],
        ("--trt", "NVIDIA GPU")),
    Row("export-out-not-empty", ["export", "{good_ckpt}", "--out", "{out}"],
        ("{out}", "not empty", "--overwrite"), files={"out/keep.onnx": b"previous export"}),
    Row("export-bad-opset", ["export", "{good_ckpt}", "--out", "{out}", "--opset", "seventeen"],
        ("--opset", "integer")),
    Row("export-calib-data-missing", ["export", "{good_ckpt}", "--out", "{out}", "--int8",
                                      "--calib-data", "{missing_dir}"], ("{missing_dir}", "not found")),
    # ---- eval of exported artifacts (deploy.runtime)
    Row("eval-not-onnx", [*EVAL, "{not_onnx}"], ("{not_onnx}", "ONNX")),
    Row("eval-manifest-sha-mismatch", [*EVAL, "{sha_onnx}"], ("{sha_onnx}", "sha256")),
    Row("eval-manifest-not-json", [*EVAL, "{not_json_manifest}"], ("manifest.json", "JSON")),
    # ---- bench
    Row("bench-flops-missing", ["flops", "{missing}"], ("{missing}", "not found"), prog="bench"),
    Row("bench-flops-corrupt", ["flops", "{corrupt_ckpt}"], ("{corrupt_ckpt}", "corrupt"),
        prog="bench"),
    Row("bench-flops-payload", ["flops", "{payload_ckpt}"], ("{payload_ckpt}", "refused"),
        prog="bench"),
    Row("bench-flops-not-onnx", ["flops", "{not_onnx}"], ("{not_onnx}", "manifest.json"),
        prog="bench", console=True),
    Row("bench-flops-size-not-32", ["flops", "{good_ckpt}", "--size", "65x64"],
        ("65x64", "multiples of 32"), prog="bench"),
    Row("bench-flops-plain-state-dict", ["flops", "{plain_sd}"], ("{plain_sd}", "state_dict"),
        prog="bench"),
    Row("bench-latency-cuda", ["latency", "{good_ckpt}", "--device", "cuda", "--runs", "1",
                               "--warmup", "0"], ("cuda", "GPU"), prog="bench", console=True),
    Row("bench-latency-not-onnx", ["latency", "{not_onnx}", "--runs", "1", "--warmup", "0"],
        ("{not_onnx}", "ONNX"), prog="bench"),
    Row("bench-latency-sha-mismatch", ["latency", "{sha_onnx}", "--runs", "1", "--warmup", "0"],
        ("{sha_onnx}", "sha256"), prog="bench"),
    Row("bench-latency-runs-zero", ["latency", "{good_ckpt}", "--runs", "0"],
        ("--runs", "greater than or equal to 1"), prog="bench"),
    Row("bench-latency-json-untouched", ["latency", "{corrupt_ckpt}", "--runs", "1",
                                         "--json", "{out}/lat.json"],
        ("{corrupt_ckpt}", "corrupt"), prog="bench", files={"out/lat.json": b'{"old": 1}'}),
    Row("bench-report-teacher-missing", ["report", "--teacher", "{missing}", "--student",
                                         "{good_ckpt}", "--data-kind", "synthetic", "--out",
                                         "{out}", "-q"], ("{missing}", "not found"), prog="bench"),
    Row("bench-report-no-data", ["report", "--teacher", "{good_ckpt}", "--student",
                                 "{good_ckpt}", "--out", "{out}"], ("--data",), prog="bench"),
    # ---- pseudo-label / compare
    Row("pseudo-images-missing", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                                  "{missing_dir}", "--out", "{out}", "-q"],
        ("{missing_dir}", "not found"), console=True),
    Row("pseudo-teacher-corrupt", ["pseudo-label", "--teacher", "{corrupt_ckpt}", "--images",
                                   "{ds_ok}/images/val", "--out", "{out}", "-q"],
        ("{corrupt_ckpt}", "corrupt")),
    Row("pseudo-teacher-payload", ["pseudo-label", "--teacher", "{payload_ckpt}", "--images",
                                   "{ds_ok}/images/val", "--out", "{out}", "-q"],
        ("{payload_ckpt}", "refused")),
    Row("pseudo-threshold-range", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                                   "{ds_ok}/images/val", "--out", "{out}", "--threshold", "1.5"],
        ("threshold", "1.5")),
    Row("pseudo-bad-class-threshold", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                                       "{ds_ok}/images/val", "--out", "{out}",
                                       "--class-threshold", "Pole"],
        ("--class-threshold", "Pole", "NAME=VALUE")),
    Row("pseudo-bad-scales", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                              "{ds_ok}/images/val", "--out", "{out}", "--scales", "big"],
        ("--scales", "big")),
    Row("pseudo-device-cuda", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                               "{ds_ok}/images/val", "--out", "{out}", "--device", "cuda", "-q"],
        ("cuda", "GPU")),
    Row("pseudo-teacher-weight-count", ["pseudo-label", "--teacher", "{good_ckpt}",
                                        "--teacher-weight", "0.7", "--teacher-weight", "0.3",
                                        "--images", "{ds_ok}/images/val", "--out", "{out}", "-q"],
        ("--teacher-weight", "2 times", "1 --teacher")),
    Row("pseudo-teacher-weight-zero", ["pseudo-label", "--teacher", "{good_ckpt}", "--teacher",
                                       "{good_ckpt}", "--teacher-weight", "1", "--teacher-weight",
                                       "0", "--images", "{ds_ok}/images/val", "--out", "{out}"],
        ("--teacher-weight 0", "positive")),
    Row("pseudo-class-map-typo", ["pseudo-label", "--teacher", "{good_ckpt}", "--class-map",
                                  "{y_cmap_typo}", "--images", "{ds_ok}/images/val", "--out",
                                  "{out}", "-q"], ("{y_cmap_typo}", "'fgg'", "did you mean 'fg'")),
    Row("compare-config-missing", ["compare", "-c", "{y_missing}"], ("{y_missing}", "not found")),
    # ---- round 3: trust and wrong results (issue 20)
    # a checkpoint names only what the registries hold: no encoder fetched from the Hub or
    # a folder, no kwarg that timm turns into a file read (refused before anything is built)
    Row("eval-hf-hub-encoder", [*EVAL, "{hf_hub_ckpt}"],
        ("{hf_hub_ckpt}", "encoder", "tu-hf-hub:timm/efficientnet_lite0", "--trust-factory")),
    Row("eval-local-dir-encoder", [*EVAL, "{local_dir_ckpt}"],
        ("{local_dir_ckpt}", "encoder", "tu-local-dir:", "--trust-factory")),
    Row("export-checkpoint-path-kwarg", ["export", "{ckpt_path_kwarg}", "--out", "{out}"],
        ("{ckpt_path_kwarg}", "kwargs.checkpoint_path", "--trust-factory")),
    Row("bench-flops-pretrained-cfg-overlay", ["flops", "{cfg_overlay_kwarg}"],
        ("{cfg_overlay_kwarg}", "kwargs.pretrained_cfg_overlay", "--trust-factory"), prog="bench"),
    # eval makes the label-set checks train makes (one function)
    Row("eval-reversed-class-names", ["eval", "{named_ckpt}", "--data", "{ds_reversed}", "--kind",
                                      "folder", "--out", "{out}"],
        ("{named_ckpt}", "another order", "'ring'", "'background'")),
    Row("eval-ignore-index-is-a-class", ["eval", "{ignore_class_ckpt}", "--data", "{ds_ok}",
                                         "--kind", "folder", "--out", "{out}"],
        ("ignore_index 1", "'disc'", "void")),
    Row("train-reversed-class-names", [*TRAIN, "data.kind=folder", "data.root={ds_ok}",
                                       "class_names=[ring,triangle,box,disc,background]"],
        ("class_names", "another order", "'background'")),
    # an artifact with non-finite outputs is never scored or timed
    Row("eval-nan-onnx", [*EVAL, "{nan_onnx}"], ("{nan_onnx}", "NaN/inf")),
    Row("bench-latency-nan-onnx", ["latency", "{nan_onnx}", "--runs", "1", "--warmup", "0"],
        ("{nan_onnx}", "NaN/inf"), prog="bench"),
    # silently accepted before, refused in one line now
    Row("config-empty-recipe", ["train", "-c", "{y_empty}"], ("{y_empty}", "empty")),
    Row("override-base", [*TRAIN, "base=other.yaml"], ("base=other.yaml", "'base'", "-c")),
    Row("export-target-without-int8", ["export", "{good_ckpt}", "--out", "{out}", "--target",
                                       "tensorrt"], ("--target tensorrt", "--int8")),
    Row("export-int8-method-without-int8", ["export", "{good_ckpt}", "--out", "{out}",
                                            "--int8-method", "modelopt"],
        ("--int8-method modelopt", "--int8")),
    Row("export-batch-zero", ["export", "{good_ckpt}", "--out", "{out}", "--batch", "0"],
        ("--batch", "greater than or equal to 1")),
    Row("export-trt-max-batch-zero", ["export", "{good_ckpt}", "--out", "{out}",
                                      "--trt-max-batch", "0"], ("--trt-max-batch", ">= 1")),
    Row("eval-depth-single-task", [*EVAL, "{good_ckpt}", "--depth", "dense"],
        ("--depth dense", "single-task")),
    Row("candidates-budget-negative", ["candidates", "--budget-ms", "-1"],
        ("--budget-ms", "greater than or equal to 0"), prog="bench"),
    Row("pseudo-previews-negative", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                                     "{ds_ok}/images/val", "--out", "{out}", "--previews", "-1"],
        ("--previews", "greater than or equal to 0")),
    Row("prune-round-to-zero", ["prune", "{good_ckpt}", "--out", "{out}/pruned.pt",
                                "--macs-ratio", "0.5", "--round-to", "0"],
        ("--round-to", "greater than or equal to 1")),
    # ---- trust boundaries and bounded parsing (issue 10)
    Row("config-alias-bomb", ["train", "-c", "{y_alias_bomb}"], ("{y_alias_bomb}", "aliases")),
    Row("study-alias", ["compare", "-c", "{y_study_alias}"], ("{y_study_alias}", "aliases")),
    Row("config-not-utf8", ["train", "-c", "{y_latin1}"], ("{y_latin1}", "UTF-8")),
    Row("override-malformed-yaml", [*TRAIN, "data.size=[64,64"], ("data.size", "not valid YAML")),
    Row("override-python-tag", [*TRAIN, "seed=!!python/object/apply:os.system [true]"],
        ("seed", "not valid YAML")),
    Row("data-folder-empty-classes", [*TRAIN, "data.kind=folder", "data.root={ds_empty_classes}"],
        ("classes.txt", "no class names")),
    Row("data-folder-classes-not-utf8", [*TRAIN, "data.kind=folder",
                                         "data.root={ds_latin1_classes}"],
        ("classes.txt", "UTF-8")),
    Row("eval-decompression-bomb", ["eval", "{good_ckpt}", "--data", "{ds_bomb}", "--kind",
                                    "folder", "--out", "{out}"], ("{bomb_img}", "pixels")),
    Row("train-ignore-index-is-a-class", [*TRAIN, "ignore_index=1"],
        ("ignore_index 1", "'disc'", "void")),
    Row("train-negative-seed", [*TRAIN, "seed=-1"], ("seed", "greater than or equal to 0")),
    Row("train-empty-task-loss", [*TRAIN, "loss.ce=0", "loss.dice=0"],
        ("loss.ce and loss.dice are both 0", "w_task=0")),
    Row("train-epoch-samples-below-batch", [*TRAIN, "data.epoch_samples=1"],
        ("data.epoch_samples=1", "fewer than one batch")),
    Row("train-negative-class-weight", [*TRAIN, "loss.class_weights=[1,-1,1,1,1]"],
        ("loss.class_weights", ">= 0")),
    Row("train-class-weights-length", [*TRAIN, "loss.class_weights=[1,1]"],
        ("loss.class_weights", "2 entries", "5 classes")),
    Row("eval-nan-checkpoint", [*EVAL, "{nan_ckpt}"], ("{nan_ckpt}", "segmentation_head", "NaN")),
    Row("export-nan-checkpoint", ["export", "{nan_ckpt}", "--out", "{out}"], ("{nan_ckpt}", "NaN")),
    Row("distill-nan-teacher", [*DISTILL, "teacher.checkpoint={nan_ckpt}"], ("{nan_ckpt}", "NaN")),
    Row("bench-latency-nan-checkpoint", ["latency", "{nan_ckpt}", "--runs", "1", "--warmup", "0"],
        ("{nan_ckpt}", "NaN"), prog="bench"),
    Row("eval-onnx-other-classes", [*EVAL, "{onnx_wrong_classes}"],
        ("{onnx_wrong_classes}", "outputs 3 classes", "says 5")),
    Row("compare-unknown-key", ["compare", "-c", "{y_study_typo}"], ("{y_study_typo}", "recipez")),
    Row("eval-onnx-static-other-size", [*EVAL, "{onnx_other_size}"],
        ("{onnx_other_size}", "fixed input size 96x96", "64x64")),
    Row("eval-onnx-rank3-input", [*EVAL, "{onnx_rank3}"],
        ("{onnx_rank3}", "[1, 64, 64]", "NCHW")),
    Row("eval-onnx-nhwc-input", [*EVAL, "{onnx_nhwc}"], ("{onnx_nhwc}", "[1, 64, 64, 3]", "NCHW")),
    Row("eval-onnx-missing-external-data", [*EVAL, "{onnx_external}"], ("{onnx_external}",)),
    Row("bench-latency-onnx-nhwc", ["latency", "{onnx_nhwc}", "--runs", "1", "--warmup", "0"],
        ("{onnx_nhwc}", "NCHW"), prog="bench"),
    Row("eval-openvino-other-classes", [*EVAL, "{ov_wrong_classes}"],
        ("{ov_wrong_classes}", "outputs 3 classes", "says 5")),
]

# Rows known to fail for reasons in another package's code (none now; kept so a gap found
# later can be recorded with its reason instead of silently skipped).
KNOWN_GAPS: dict[str, str] = {}

IDS = [r.id for r in ROWS]
assert len(set(IDS)) == len(IDS), "duplicate row ids"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _prepare(row: Row, bad: dict[str, str], work: Path) -> tuple[list[str], dict, list[str]]:
    values = {**bad, "out": str(work / "out")}
    for rel, content in row.files.items():
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    argv = [a.format(**values) for a in row.argv]
    expect = [e.format(**values) for e in row.expect]
    before = {p: _sha(p) for p in results_left(work)}
    return argv, before, expect


def _check(row: Row, r, bad: dict[str, str], work: Path, before: dict, expect: list[str]) -> str:
    line = error_line(r)
    missing = [e for e in expect if e.lower() not in line.lower()]
    assert not missing, f"error line does not name {missing}:\n{line}"
    after = {p: _sha(p) for p in results_left(work)}
    assert after == before, f"result files appeared or changed: {set(after) ^ set(before)}"
    assert not Path(bad["marker"]).exists(), "the pickle payload RAN"
    return line


def _skip_unavailable(row: Row) -> None:
    if not command_available(row.prog, row.command) and row.command not in ("trian",):
        pytest.skip(f"`{row.prog} {row.command}`: command not available yet")


def _params(console_default: bool | None):
    out = []
    for row in ROWS:
        marks = []
        if row.id in KNOWN_GAPS:
            marks.append(pytest.mark.xfail(reason=KNOWN_GAPS[row.id], strict=False))
        if console_default is not None and row.console != console_default:
            continue
        if console_default is False:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(row, id=row.id, marks=marks))
    return out


def test_table_has_at_least_fifty_rows_across_every_command():
    assert len(ROWS) >= 50
    commands = {(r.prog, r.command) for r in ROWS}
    for cmd in [("compress", c) for c in ("train", "distill", "eval", "export", "pseudo-label",
                                          "compare")] + [("bench", c) for c in
                                                         ("flops", "latency", "report")]:
        assert cmd in commands, cmd


def _run_row(row: Row, bad, tmp_path, run, key: str, suffix: str = "") -> None:
    """One row through ``run`` (in-process or console), checked and recorded under ``key``."""
    _skip_unavailable(row)
    record(f"{key}_tried", row.id)
    argv, before, expect = _prepare(row, bad, tmp_path)
    r = run(row.prog, argv)
    _check(row, r, bad, tmp_path, before, expect)
    record(key, row.id)
    if "payload" in row.id:
        record("payload_refused", row.id + suffix)


@pytest.mark.parametrize("row", _params(None))
def test_bad_input_inprocess(row: Row, bad, tmp_path):
    """Every row through ``main()`` in this process."""
    _run_row(row, bad, tmp_path, run_inprocess, "bad_inputs")


@pytest.mark.parametrize("row", _params(True) + _params(False))
def test_bad_input_console(row: Row, bad, tmp_path):
    """Rows through the real console entry, ``python -m segcompress.cli`` / ``bench.cli``
    (a representative subset by default, all of them with ``-m slow``)."""
    _run_row(row, bad, tmp_path, run_console, "bad_inputs_console", " (console)")


def test_debug_shows_the_traceback(bad, tmp_path):
    """``--debug`` trades the one line for the full traceback."""
    r = run_console("compress", ["--debug", *EVAL, bad["corrupt_ckpt"]])
    assert r.code != 0 and "Traceback" in r.stderr and "UnsafeFileError" in r.stderr


def test_payload_is_real_code_and_is_never_run(tmp_path):
    """Control: a full unpickle of the payload file does run code (creates the marker);
    the safe loader refuses the same file and the marker stays absent."""
    from compress.io import UnsafeFileError, load_torch_file

    marker = tmp_path / "ran"
    path = payload_checkpoint(tmp_path / "p.pt", marker)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_torch_file(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the unsafe way, on purpose, on our own file
    assert marker.exists(), "the payload is not code after all: the rows prove nothing"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


# ---------------------------------------------------------------- round 3: outputs, one line, bounds
# (issue 20) --out / --json never over a file the toolkit did not write (compress.outdir),
# one line where a traceback was, bounds checked before any work. Rows of their own (the
# parametrised tests above are built from ROWS when they are defined), run the same way.


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()
PSEUDO = ["pseudo-label", "--teacher", "{good_ckpt}", "--images", "{ds_ok}/images/val", "-q"]
REPORT = ["report", "--teacher", "{good_ckpt}", "--student", "{good_ckpt}", "--data-kind",
          "synthetic", "-q"]


def _nested(depth: int):
    value: list | int = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture(scope="session")
def bad3(bad, tmp_path_factory) -> dict[str, str]:
    """``bad`` plus the files of round 3: dangling links, an export dir of ours with an
    edited artifact, a pseudo-label output of ours, checkpoints with a huge or deeply
    nested spec or a tampered QAT block, deeply nested recipes and studies."""
    from compress.pseudo import pseudo_label
    from deploy.pipeline import ExportConfig, export_checkpoint

    d = tmp_path_factory.mktemp("round3")
    f: dict[str, Path] = {}
    f["dangling"] = d / "dangling"
    f["dangling"].symlink_to(d / "nowhere")
    f["a_file"] = d / "notes.txt"
    f["a_file"].write_text("a user's notes\n")
    # an export of ours, one artifact edited by hand afterwards
    f["export_edited"] = d / "export_edited"
    export_checkpoint(bad["good_ckpt"], f["export_edited"],
                      ExportConfig(val_size=2, synthetic_val_length=2))
    with open(f["export_edited"] / "model.onnx", "ab") as fh:
        fh.write(b"\x00")
    # a pseudo-label output of ours: one with a hand-edited mask, one whose previews/ links away
    for name in ("pseudo_edited", "pseudo_linked"):
        f[name] = d / name
        pseudo_label([bad["good_ckpt"]], Path(bad["ds_ok"]) / "images" / "val", f[name],
                     show=False, previews=0)
    (f["pseudo_edited"] / "masks" / "img0.png").write_bytes(PNG)
    (d / "elsewhere").mkdir()
    (f["pseudo_linked"] / "previews").symlink_to(d / "elsewhere")
    # checkpoints whose spec says 32768x32768, or nests 200 levels deep
    spec = tiny_spec().to_dict()
    state = create_model(tiny_spec()).state_dict()
    for name, change in (("huge_spec", {"input_size": [32768, 32768]}),
                         ("deep_spec", {"kwargs": {"x": _nested(200)}})):
        f[name] = d / f"{name}.pt"
        torch.save({"format": "segcompress-checkpoint/1", "spec": {**spec, **change},
                    "state_dict": state}, f[name])
    f["qat_tampered"] = d / "qat_tampered.pt"
    torch.save({"format": "segcompress-checkpoint/1", "spec": spec, "state_dict": state,
                "quantization": {"format": "segcompress-qat/1", "preset": "turbo",
                                 "nncf_config": {}}}, f["qat_tampered"])
    y = d / "yaml"
    y.mkdir()
    deep = "[" * 5000 + "]" * 5000
    f["y_deep"] = y / "deep.yaml"
    f["y_deep"].write_text(f"train: {deep}\n")
    f["y_deep_study"] = y / "deep_study.yaml"
    f["y_deep_study"].write_text(f"name: s\nrecipes: {deep}\n")
    f["study_out"] = d / "studies"
    (f["study_out"] / "s").mkdir(parents=True)
    (f["study_out"] / "s" / "comparison.md").write_text("the user's own notes\n")
    f["y_study_users"] = y / "study_users.yaml"
    f["y_study_users"].write_text(f"name: s\nbaseline: r\noutput_dir: {f['study_out']}\n"
                                  f"recipes: [{{name: r, runs: ['{d}/no_runs/*']}}]\n")
    return {**bad, **{k: str(v) for k, v in f.items()}}


ROUND3 = [
    # ---- user files lost
    Row("pseudo-images-inside-out", ["pseudo-label", "--teacher", "{good_ckpt}", "--images",
                                     "{out}/images", "--out", "{out}", "-q"],
        ("--images", "inside --out"), files={"out/images/a.png": PNG, "out/images/b.png": PNG}),
    Row("pseudo-rerun-edited-mask", [*PSEUDO, "--out", "{pseudo_edited}"],
        ("img0.png", "edited since the toolkit wrote it")),
    Row("pseudo-rerun-previews-symlink", [*PSEUDO, "--out", "{pseudo_linked}", "--previews", "1"],
        ("previews", "is a symlink")),
    Row("pseudo-out-foreign-folder", [*PSEUDO, "--out", "{out}"],
        ("{out}", "not written by segcompress"), files={"out/previews/mine.png": PNG}),
    Row("eval-out-users-eval-json", [*EVAL, "{good_ckpt}"], ("{out}", "not written by segcompress"),
        files={"out/eval.json": b'{"mine": 1}'}),
    Row("report-out-users-report-md", [*REPORT, "--out", "{out}"],
        ("{out}", "not written by segcompress"), prog="bench", files={"out/report.md": b"mine"}),
    Row("compare-users-comparison-md", ["compare", "-c", "{y_study_users}"],
        ("comparison.md", "not written by segcompress")),
    Row("candidates-out-users-files", ["candidates", "unet-lite0", "--out", "{out}", "-q"],
        ("{out}", "not written by segcompress"), prog="bench",
        files={"out/candidates.md": b"mine"}),
    Row("flops-json-users-file", ["flops", "{good_ckpt}", "--json", "{out}/flops.json"],
        ("{out}/flops.json", "not written by segcompress"), prog="bench",
        files={"out/flops.json": b'{"mine": 1}'}),
    Row("latency-json-users-file", ["latency", "{good_ckpt}", "--runs", "1", "--warmup", "0",
                                    "--json", "{out}/lat.json"],
        ("{out}/lat.json", "not written by segcompress"), prog="bench",
        files={"out/lat.json": b'{"mine": 1}'}),
    Row("export-overwrite-edited-artifact", ["export", "{good_ckpt}", "--out", "{export_edited}",
                                             "--overwrite"],
        ("model.onnx", "changed since the export wrote it", "kept")),
    # ---- one line where a traceback was
    Row("prune-no-target", ["prune", "{good_ckpt}", "--out", "{out}/p.pt"],
        ("--macs-ratio", "--target-gmacs")),
    Row("prune-ratio-range", ["prune", "{good_ckpt}", "--out", "{out}/p.pt", "--macs-ratio", "1.5"],
        ("--macs-ratio", "(0, 1)", "1.5")),
    Row("prune-out-exists", ["prune", "{good_ckpt}", "--out", "{a_file}", "--macs-ratio", "0.5"],
        ("{a_file}", "exists")),
    Row("prune-batches-zero", ["prune", "{good_ckpt}", "--out", "{out}/p.pt", "--macs-ratio",
                               "0.5", "--importance", "taylor", "--batches", "0"], ("--batches",)),
    Row("export-qat-tampered", ["export", "{qat_tampered}", "--out", "{out}", "--int8"],
        ("{qat_tampered}", "quantization key 'preset'")),
    Row("train-task-named-dunder-class", [*TRAIN, "model.tasks=[{{name: __class__, kind: depth}}]"],
        ("model.tasks", "__class__")),
    Row("config-nested-too-deep", ["train", "-c", "{y_deep}"],
        ("{y_deep}", "nested deeper than 64")),
    Row("study-nested-too-deep", ["compare", "-c", "{y_deep_study}"],
        ("{y_deep_study}", "nested deeper than 64")),
    Row("override-nested-too-deep", [*TRAIN, "train.epochs=" + "[" * 5000 + "]" * 5000],
        ("train.epochs", "nested deeper than 64")),
    Row("eval-spec-nested-too-deep", [*EVAL, "{deep_spec}"], ("{deep_spec}", "nested deeper")),
    Row("eval-out-is-a-file", ["eval", "--out", "{a_file}", "--kind", "synthetic", "--data",
                               "unused", "{good_ckpt}"], ("{a_file}", "existing file")),
    Row("eval-out-dangling", ["eval", "--out", "{dangling}", "--kind", "synthetic", "--data",
                              "unused", "{good_ckpt}"], ("{dangling}", "dangling symlink")),
    Row("pseudo-out-is-a-file", [*PSEUDO, "--out", "{a_file}"], ("{a_file}", "existing file")),
    Row("pseudo-out-dangling", [*PSEUDO, "--out", "{dangling}"], ("{dangling}", "dangling")),
    Row("report-out-dangling", [*REPORT, "--out", "{dangling}"], ("{dangling}", "dangling"),
        prog="bench"),
    Row("report-out-is-a-file", [*REPORT, "--out", "{a_file}"], ("{a_file}", "existing file"),
        prog="bench"),
    Row("candidates-out-is-a-file", ["candidates", "unet-lite0", "--out", "{a_file}", "-q"],
        ("{a_file}", "existing file"), prog="bench"),
    Row("synthetic-out-dangling", ["synthetic", "--out", "{dangling}", "--length", "1"],
        ("{dangling}", "dangling")),
    Row("synthetic-out-under-a-file", ["synthetic", "--out", "{a_file}/data", "--length", "1"],
        ("{a_file}", "not a folder")),
    Row("export-out-dot", ["export", "{good_ckpt}", "--out", "."], ("--out .", "current folder")),
    Row("export-threads-negative", ["export", "{good_ckpt}", "--out", "{out}", "--threads", "-2"],
        ("--threads", "greater than or equal to 1")),
    Row("export-calib-size-negative", ["export", "{good_ckpt}", "--out", "{out}", "--int8",
                                       "--calib-size", "-5"], ("--calib-size", "greater than or equal to 1")),
    Row("export-static-batch-zero", ["export", "{good_ckpt}", "--out", "{out}", "--static-batch",
                                     "--batch", "0"], ("--batch", "greater than or equal to 1")),
    # ---- sizes before any allocation (compress.spec.MAX_SIDE)
    Row("eval-spec-size-32768", [*EVAL, "{huge_spec}"], ("{huge_spec}", "input_size", "8192")),
    Row("bench-flops-spec-size-32768", ["flops", "{huge_spec}"],
        ("{huge_spec}", "input_size", "8192"), prog="bench"),
    Row("synthetic-size-100000", ["synthetic", "--out", "{out}/d", "--size", "100000x100000"],
        ("100000x100000", "8192")),
    Row("export-size-too-large", ["export", "{good_ckpt}", "--out", "{out}", "--size",
                                  "16384x16384"], ("16384x16384", "8192")),
    # ---- what hung (> 120 s): bounded before the work
    Row("bench-latency-runs-billion", ["latency", "{good_ckpt}", "--runs", "1000000000"],
        ("--runs", "less than or equal to 100000"), prog="bench"),
    Row("pseudo-scale-100", [*PSEUDO, "--out", "{out}", "--scales", "100"],
        ("--scales 100", "(0, 4]")),
    Row("pseudo-nine-scales", [*PSEUDO, "--out", "{out}", "--scales", "1,1,1,1,1,1,1,1,1"],
        ("--scales", "9 scales", "at most 8")),
]

ROUND3_IDS = [r.id for r in ROUND3]
assert len(set(ROUND3_IDS + IDS)) == len(ROUND3_IDS) + len(IDS), "duplicate row ids"


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROUND3])
def test_round3_inprocess(row: Row, bad3, tmp_path):
    """Every round-3 row through ``main()`` in this process."""
    _run_row(row, bad3, tmp_path, run_inprocess, "bad_inputs")


@pytest.mark.slow
@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROUND3])
def test_round3_console(row: Row, bad3, tmp_path):
    """The round-3 rows through the real console entry (``-m slow``)."""
    _run_row(row, bad3, tmp_path, run_console, "bad_inputs_console", " (console)")


def test_round3_nothing_lost(bad3):
    """The files the refused rows pointed at are as they were: the edited artifact and
    mask, the user's comparison.md, the folder a previews/ link leads to."""
    assert (Path(bad3["export_edited"]) / "model.onnx").read_bytes().endswith(b"\x00")
    assert (Path(bad3["pseudo_edited"]) / "masks" / "img0.png").read_bytes() == PNG
    assert (Path(bad3["study_out"]) / "s" / "comparison.md").read_text() == "the user's own notes\n"
    assert list((Path(bad3["pseudo_linked"]) / "previews").iterdir()) == []
    assert Path(bad3["a_file"]).read_text() == "a user's notes\n"
