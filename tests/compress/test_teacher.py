"""The teacher side of distillation: class counts of plain state_dicts, and a teacher with
more classes than the student (8 -> 6 through kd.class_map) scored in student classes."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest
import torch

from compress.config import ConfigError, load_config
from compress.data import SYNTHETIC_CLASSES
from compress.distill import load_teacher
from compress.models import ModelError, create_model, make_spec, save_checkpoint
from compress.train import fit
from tests.conftest import TINY_DECODER, tiny_config, tiny_spec
from tests.workflows.helpers import make_folder_dataset

S6 = ["Background", "Forest", "Grassland", "Cropland", "Settlement", "SemiNatural"]
T8 = ["Tree", "Rangeland", "Cropland", "Developed", "Road", "Bareland", "Water", "Background"]
MAP_8_TO_6 = ("[[0,1,0,0,0,0],[0,0,0.7,0,0,0.3],[0,0,0,1,0,0],[0,0,0,0,1,0],[0,0,0,0,1,0],"
              "[0,0,0,0,0,1],[1,0,0,0,0,0],[1,0,0,0,0,0]]")


def _teacher8(path, plain: bool = False):
    """An 8-class teacher that says "Background" (its class 7, the student's 0) everywhere."""
    spec = make_spec(arch="Unet", encoder="tu-efficientnet_lite0", classes=8, class_names=T8,
                     decoder_channels=TINY_DECODER, input_size=(64, 64))
    model = create_model(spec)
    with torch.no_grad():
        model.segmentation_head[0].bias[7] = 50.0
    if plain:
        torch.save(model.state_dict(), path)
        return path
    return save_checkpoint(path, model, spec)


@pytest.fixture
def data6(tmp_path):
    # synthetic class 4 -> 5: the last student class occurs (what made the old preflight crash)
    return make_folder_dataset(tmp_path / "data6", S6, {"train": 8, "val": 4}, remap={4: 5})


def _cfg(tmp_path, data6, teacher, extra=()):
    return tiny_config(tmp_path, ["data.kind=folder", f"data.root={data6}", "train.epochs=1",
                                  "w_task=0.3", "kd.response.weight=0.7",
                                  "teacher.allow_weak=true", f"teacher.checkpoint={teacher}",
                                  *extra])


def test_teacher_with_more_classes_is_scored_through_the_class_map(tmp_path, data6):
    """Before: the preflight scored raw 8-class teacher predictions against 6-class labels
    and died with "shape '[6, 6]' is invalid"."""
    t = _teacher8(tmp_path / "t8.pt")
    run = fit(_cfg(tmp_path, data6, t, [f"kd.class_map={MAP_8_TO_6}", "train.vis_every=1"]),
              show_progress=False).run_dir
    log = (run / "train.log").read_text()
    assert "label map: 8 teacher -> 6 student classes" in log
    assert "Grassland        <- Rangeland 0.70" in log
    # all "Background" in student classes: the background IoU, over 6 classes, and no crash
    miou = float(log.split("teacher val mIoU ")[1].split()[0])
    assert 3.0 < miou < 100 / 6
    assert (run / "visualizations" / "epoch_001.png").is_file()


def test_plain_state_dict_teacher_reads_its_class_count_from_its_head(tmp_path, data6):
    """Before: a plain state_dict teacher was built with the student's class count."""
    t = _teacher8(tmp_path / "t8_plain.pt", plain=True)
    extra = [f"kd.class_map={MAP_8_TO_6}", "teacher.model.decoder_channels=[16,16,8,8,8]"]
    run = fit(_cfg(tmp_path / "a", data6, t, extra), show_progress=False).run_dir
    assert "label map: 8 teacher -> 6 student classes" in (run / "train.log").read_text()
    run = fit(_cfg(tmp_path / "b", data6, t, [*extra, "teacher.model.classes=8"]),
              show_progress=False).run_dir
    assert (run / "checkpoints" / "best.pt").is_file()


@pytest.mark.slow  # a distill run: ~15 s
def test_factory_teacher_takes_its_class_count_from_teacher_model_classes(tmp_path, data6):
    from tests.compress.custom_teacher import build

    t = tmp_path / "factory8.pt"
    torch.save(build(8).state_dict(), t)
    extra = [f"kd.class_map={MAP_8_TO_6}",
             "teacher.model.factory=tests.compress.custom_teacher:build",
             "teacher.model.classes=8"]
    run = fit(_cfg(tmp_path, data6, t, extra), show_progress=False).run_dir
    assert "label map: 8 teacher -> 6 student classes" in (run / "train.log").read_text()


def test_classes_in_kwargs_points_to_the_classes_key():
    """Before: "got multiple values for keyword argument 'classes'" deep in the factory."""
    with pytest.raises(ConfigError, match=r"teacher\.model\.kwargs.*teacher\.model\.classes=8"):
        load_config(None, ["teacher.model.kwargs={classes: 8}"])


def test_student_model_classes_must_match_the_data(tmp_path):
    with pytest.raises(ValueError, match="model.classes=3 but the data has 5 classes"):
        fit(tiny_config(tmp_path, ["model.classes=3"]), show_progress=False)


@pytest.mark.slow  # a distill run: ~15 s
def test_missing_teacher_weights_allowed_are_warned_with_the_count(tmp_path, data6):
    """Before: allow_missing_keys=true ran a LoRA-only file on random base weights silently."""
    t = _teacher8(tmp_path / "t8.pt")
    ck = torch.load(t, weights_only=True)
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items()
                        if k.startswith("segmentation_head")}  # "adapter only"
    torch.save(ck, t)
    extra = [f"kd.class_map={MAP_8_TO_6}"]
    with pytest.raises(ValueError, match=r"\d+ missing"):
        fit(_cfg(tmp_path / "a", data6, t, extra), show_progress=False)
    run = fit(_cfg(tmp_path / "b", data6, t, [*extra, "teacher.allow_missing_keys=true"]),
              show_progress=False).run_dir
    log = (run / "train.log").read_text()
    line = next(ln for ln in log.splitlines() if "weights missing from the file" in ln)
    n, total = (int(v) for v in line.split("t8.pt: ")[1].split(" weights")[0].split(" of "))
    assert 0 < n < total


def test_factory_student_is_named_by_its_factory(tmp_path, data6):
    run = fit(tiny_config(tmp_path, ["model.factory=tests.compress.custom_teacher:build",
                                     "train.epochs=1"]), show_progress=False).run_dir
    assert "factory tests.compress.custom_teacher:build, 5 classes" in \
        (run / "train.log").read_text()


@pytest.mark.slow  # a distill run with feature KD from the example teacher: ~30 s
def test_example_custom_teacher_teaches_feature_kd(tmp_path):
    """The documented contract (examples/custom_teacher.py) end to end: a factory teacher
    with forward_taps, feature KD at stride 8 and the decoder, weights given as overrides."""
    from examples.custom_teacher import build

    t = tmp_path / "custom.pt"
    torch.save(build(5, width=8).state_dict(), t)
    cfg = tiny_config(tmp_path, ["train.epochs=1", f"teacher.checkpoint={t}",
                                 "teacher.allow_weak=true", "teacher.model.classes=5",
                                 "teacher.model.factory=examples.custom_teacher:build",
                                 "teacher.model.kwargs={width: 8}", "w_task=1.0",
                                 "kd.response.weight=0.5", "kd.feature.weight=0.3",
                                 "kd.feature.levels=[stride8,decoder]"])
    run = fit(cfg, show_progress=False).run_dir
    import csv

    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["train_feat"]) > 0 and float(row["train_kd"]) > 0


# ---------------------------------------------------------------- base + adapter


@contextmanager
def _log_lines():
    """Messages of the 'compress' logger (fit() turns its propagation off)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("compress")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _lora_files(tmp_path, **adapter_tensors):
    """A base checkpoint of the example teacher (no LoRA) and an adapter file holding the
    LoRA tensors of ``build(5, width=8, lora_rank=2)`` (or ``adapter_tensors``)."""
    from examples.custom_teacher import build

    base = tmp_path / "base.pt"
    torch.save(build(5, width=8).state_dict(), base)
    lora = build(5, width=8, lora_rank=2)
    torch.nn.init.normal_(lora.lora_b.weight)
    tensors = adapter_tensors or {k: v for k, v in lora.state_dict().items()
                                  if k.startswith("lora_")}
    torch.save(tensors, tmp_path / "adapter.pt")
    return base, tmp_path / "adapter.pt", tensors


def _lora_teacher(tmp_path, base, adapter=None, extra=()):
    cfg = tiny_config(tmp_path, [f"teacher.checkpoint={base}",
                                 "teacher.model.factory=examples.custom_teacher:build",
                                 "teacher.model.classes=5",
                                 "teacher.model.kwargs={width: 8, lora_rank: 2}",
                                 *([f"teacher.adapter={adapter}"] if adapter else []), *extra])
    return load_teacher(cfg, tiny_spec(class_names=SYNTHETIC_CLASSES), [], "cpu")[0]


def test_base_plus_adapter_teacher_loads_the_adapter_over_the_base(tmp_path):
    """Before: no teacher.adapter; a LoRA teacher needed one merged file, or ran its LoRA
    weights on their initial values with allow_missing_keys."""
    from examples.custom_teacher import build

    base, _, lora = _lora_files(tmp_path)
    with pytest.raises(ModelError, match=r"2 missing \(e\.g\. lora_a\.weight\)"):
        _lora_teacher(tmp_path, base)
    head_bias = torch.full((5,), 0.5)
    adapter = tmp_path / "lora_and_head.pt"
    torch.save({**lora, "head.bias": head_bias}, adapter)
    with _log_lines() as lines:
        teacher = _lora_teacher(tmp_path, base, adapter)
    state = teacher.model.state_dict()
    for k, v in {**lora, "head.bias": head_bias}.items():
        assert torch.equal(state[k], v), k
    base_state = torch.load(base, weights_only=True)
    assert torch.equal(state["head.weight"], base_state["head.weight"])
    total = len(build(5, width=8, lora_rank=2).state_dict())
    assert (f"teacher weights: {total - 2} tensors from the base {base}, 3 from the adapter "
            f"{adapter} (1 of them replace base tensors)") in lines
    assert not [ln for ln in lines if "missing" in ln]


@pytest.mark.parametrize("tensors,match", [
    ({"lora_a.weight": torch.zeros(2, 16, 1, 1), "lora_b.weight": torch.full((5, 2, 1, 1), float("nan"))},
     r"adapter\.pt: tensor 'lora_b\.weight' holds NaN or inf"),
    ({"lora_a.weight": torch.zeros(2, 16, 1, 1), "lora_c.weight": torch.zeros(1)},
     r"adapter\.pt: 1 adapter tensor\(s\) match nothing in the model: lora_c\.weight"),
    ({"lora_a.weight": torch.zeros(3, 16, 1, 1)},
     (r"adapter\.pt: adapter tensor 'lora_a\.weight' has shape \[3, 16, 1, 1\], the model's "
      r"is \[2, 16, 1, 1\]")),
])
def test_adapter_refuses_bad_tensors_by_name(tmp_path, tensors, match):
    base, adapter, _ = _lora_files(tmp_path, **tensors)
    with pytest.raises(ModelError, match=match):
        _lora_teacher(tmp_path, base, adapter)


def test_weights_missing_after_base_and_adapter_follow_allow_missing_keys(tmp_path):
    base, adapter, _ = _lora_files(tmp_path, **{"lora_a.weight": torch.ones(2, 16, 1, 1)})
    with pytest.raises(ValueError, match=r"adapter\.pt: 1 of \d+ weights missing \(e\.g\. "
                       r"lora_b\.weight\).*teacher\.allow_missing_keys=true"):
        _lora_teacher(tmp_path, base, adapter)
    with _log_lines() as lines:
        _lora_teacher(tmp_path, base, adapter, ["teacher.allow_missing_keys=true"])
    assert any("adapter.pt: 1 of" in ln and "weights missing" in ln for ln in lines)
    with pytest.raises(FileNotFoundError, match="teacher.adapter not found: .*nope.pt"):
        _lora_teacher(tmp_path, base, tmp_path / "nope.pt")


# ---------------------------------------------------------------- teacher input size


def test_teacher_runs_at_its_own_input_size_and_gives_logits_at_the_students():
    from compress.distill import Teacher
    from tests.compress.custom_teacher import build_fixed

    model = build_fixed(5, (96, 96))
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    t_spec = tiny_spec(size=(96, 96))
    teacher = Teacher(model, t_spec, tiny_spec(size=(64, 64)), [])
    x = torch.randn(2, 3, 64, 64)
    logits, _ = teacher(x)
    assert seen == [(96, 96)] and logits.shape == (2, 5, 64, 64)
    # the same as running the model on the bilinearly resized image and resizing back
    up = torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    with torch.no_grad():
        want = torch.nn.functional.interpolate(model(up), size=(64, 64), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(logits, want)
    # at its own size nothing is resized
    same = Teacher(model, t_spec, t_spec, [])
    assert same(torch.randn(1, 3, 96, 96))[0].shape == (1, 5, 96, 96)
    assert seen[-1] == (96, 96)


@pytest.mark.slow  # two distill runs: ~30 s
@pytest.mark.parametrize("cache", [False, True], ids=["live", "cached"])
def test_distill_from_a_fixed_size_teacher_at_another_size(tmp_path, cache):
    """Before: the student's 64x64 images went to a teacher built for 96x96 and the
    positional embedding's add failed ("size of tensor a (64) must match ... (96)")."""
    from tests.compress.custom_teacher import build_fixed

    t = tmp_path / "fixed.pt"
    torch.save(build_fixed(5, (96, 96)).state_dict(), t)
    cfg = tiny_config(tmp_path, [
        "train.epochs=1", "train.max_steps_per_epoch=2", "data.synthetic_length=8",
        f"teacher.checkpoint={t}", "teacher.allow_weak=true", "teacher.model.classes=5",
        "teacher.model.factory=tests.compress.custom_teacher:build_fixed",
        "teacher.model.kwargs={size: [96, 96]}", "teacher.input_size=[96,96]",
        "kd.response.weight=0.5", f"kd.cache={str(cache).lower()}"])
    run = fit(cfg, show_progress=False).run_dir
    import csv

    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["train_kd"]) > 0


NAME_MAP_8_TO_6 = ("{Tree: Forest, Rangeland: {Grassland: 0.7, SemiNatural: 0.3}, "
                   "Cropland: Cropland, Developed: Settlement, Road: Settlement, "
                   "Bareland: SemiNatural, Water: Background, Background: Background}")


@pytest.mark.slow  # a distill run: ~15 s
def test_plain_state_dict_teacher_takes_class_names_for_a_class_map_by_name(tmp_path, data6):
    """Issue 23: before, a plain state_dict teacher's classes were class_0..7, so a class
    map had to be written against those; teacher.class_names names them."""
    t = _teacher8(tmp_path / "t8_plain.pt", plain=True)
    extra = [f"kd.class_map={NAME_MAP_8_TO_6}", "teacher.model.decoder_channels=[16,16,8,8,8]",
             f"teacher.class_names=[{','.join(T8)}]"]
    run = fit(_cfg(tmp_path / "a", data6, t, extra), show_progress=False).run_dir
    log = (run / "train.log").read_text()
    assert "label map: 8 teacher -> 6 student classes" in log
    assert "Grassland        <- Rangeland 0.70" in log
    with pytest.raises(ConfigError, match=r"teacher.class_names has 7 names but the teacher "
                                          r".*t8_plain.pt has 8 classes"):
        fit(_cfg(tmp_path / "b", data6, t, [*extra[:2], f"teacher.class_names=[{','.join(T8[:7])}]"]),
            show_progress=False)
    named = _teacher8(tmp_path / "t8.pt")
    with pytest.raises(ConfigError, match="names its own classes"):
        fit(_cfg(tmp_path / "c", data6, named, extra), show_progress=False)


def test_missing_teacher_weights_point_at_teacher_adapter(tmp_path, data6):
    """Issue 23: a factory teacher whose file holds part of its weights (a LoRA file given
    as the checkpoint) is named by its factory and pointed at teacher.adapter."""
    from tests.compress.custom_teacher import build

    t = tmp_path / "partial.pt"
    torch.save({k: v for k, v in build(8).state_dict().items() if k.startswith("2.")}, t)
    extra = [f"kd.class_map={MAP_8_TO_6}",
             "teacher.model.factory=tests.compress.custom_teacher:build",
             "teacher.model.classes=8"]
    with pytest.raises(ModelError) as e:
        fit(_cfg(tmp_path, data6, t, extra), show_progress=False)
    msg = str(e.value)
    assert "factory tests.compress.custom_teacher:build" in msg and "Unet" not in msg
    assert "2 missing" in msg and "teacher.adapter" in msg


def test_teacher_preflight_and_validation_show_progress(tmp_path, data6, capfd):
    """Issue 23: the teacher preflight and each validation had no progress bar."""
    t = _teacher8(tmp_path / "t8.pt")
    fit(_cfg(tmp_path, data6, t, [f"kd.class_map={MAP_8_TO_6}"]), show_progress=True)
    err = capfd.readouterr().err
    assert "teacher preflight" in err and "val 1" in err
