"""``export_checkpoint``: checkpoint -> verified ONNX -> [INT8] -> [OpenVINO] -> [TensorRT].

Everything is written into a temporary directory beside ``out`` and moved into place only
after the last step passed, with ``manifest.json`` written last: a failed export leaves
nothing that looks valid. Every artifact is checked against a reference on real images
(the scored split, ``val`` by default) before it is kept.

Data roles: calibration images come from ``calib_split`` (``train``); agreement and mIoU
are measured on ``val_split``. The two must differ. With ``calib_images`` (a folder of
unlabelled images) every ``holdout_every``-th image is held back and the rest calibrate;
the INT8 budget is then measured against the f32 model's own predictions on the held-back
images (``quantization.budget`` in the manifest says which kind of budget applied).

``target="tensorrt"`` (implied by ``trt``) quantizes for TensorRT: symmetric signed INT8
(zero points 0), Q/DQ on the inputs of weighted layers, checked by
:func:`deploy.backends.tensorrt.check_qdq_graph`. That graph is scored on the CPU with
ONNX Runtime under the same budget, and a GPU engine is built from the same file (its
sha256 recorded).

Every option is checked by :func:`validate_config` before anything is read or written
(``compress export`` only maps its flags onto an :class:`ExportConfig`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from compress.errors import InputError
from compress.io import current_umask
from compress.outdir import check_folder_path
from compress.spec import MAX_SIDE, ModelSpec
from deploy import runtime as registry
from deploy.errors import (
    BackendUnavailable,
    DeployError,
    ExportError,
    ManifestError,
    QuantizationError,
    VerificationError,
)

Log = Callable[[str], None]


INT8_METHODS = ("nncf", "modelopt")  # modelopt: TensorRT graphs, the modelopt extra
TARGETS = ("cpu", "tensorrt")  # whom the INT8 graph is for


@dataclass
class ExportConfig:
    """What ``compress export`` does; see ``docs/deploy.md``.

    ``max_drop`` is in mIoU points (1.0 = one point of mIoU, i.e. 0.01).
    ``preset`` None means ``performance`` when TensorRT is built (it needs symmetric
    scales) and ``mixed`` otherwise.
    """

    size: tuple[int, int] | None = None
    batch_size: int = 1
    dynamic_batch: bool = True
    dynamic_spatial: bool = False
    opset: int = 17
    argmax: bool = False
    data: Path | None = None
    data_kind: str | None = None
    val_split: str = "val"
    val_size: int | None = None
    calib_split: str = "train"
    calib_size: int = 300
    int8: bool = False
    openvino: bool = False
    trt: bool = False
    aoti: bool = False
    aoti_device: str = "cpu"
    e2e: tuple[int, int] | None = None  # camera H x W: add the frame-to-map graphs
    executorch: bool = False
    litert: bool = False
    preset: str | None = None
    calib_stat: str = "default"
    max_drop: float = 1.0
    float_layers: tuple[str, ...] = ()
    accuracy_control: bool = True
    max_float_layers: int = 20
    min_agreement: float = 0.999
    trt_max_batch: int = 8
    trt_workspace_gib: float = 4.0
    trt_timing_cache: Path | None = None
    threads: int | None = None
    eval_batch: int = 4
    overwrite: bool = False
    synthetic_val_length: int = 16
    target: str = "cpu"
    calib_images: Path | None = None
    holdout_every: int = 5
    int8_method: str = "nncf"

    @property
    def tensorrt_graph(self) -> bool:
        """Whether the INT8 graph is the one TensorRT consumes (``--trt`` or ``--target``)."""
        return self.trt or self.target == "tensorrt"


def check_size(size: tuple[int, int]) -> None:
    """Refuse an export input size that is not made of positive multiples of 32."""
    if any(s <= 0 or s % 32 for s in size):
        raise InputError(f"export: input size {size[0]}x{size[1]} must be multiples of 32")
    if max(size) > MAX_SIDE:
        raise InputError(f"export: input size {size[0]}x{size[1]}: at most {MAX_SIDE} pixels "
                         "a side")


def validate_config(cfg: ExportConfig) -> str:
    """Every check ``cfg`` allows on its own, made before anything is read or written:
    TensorRT present when ``trt`` (first, so nothing is half-done), the choices (preset,
    target, INT8 method, calibration statistic), option combinations, the ranges. The
    checks that need the checkpoint (its size default, a QAT preset) follow its loading.

    Returns:
        The NNCF preset to use (``cfg.preset``, or the default for the target).

    Raises:
        BackendUnavailable: ``trt`` without TensorRT or a GPU.
        InputError: a bad option, naming it and the valid values.
    """
    if cfg.trt:
        from deploy.backends.tensorrt import check_tensorrt

        check_tensorrt("--trt")
    from deploy.quantize import CALIB_STATS, PRESETS

    preset = cfg.preset or ("performance" if cfg.tensorrt_graph else "mixed")
    if preset not in PRESETS:
        raise InputError(f"export: unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if cfg.target not in TARGETS:
        raise InputError(f"export: unknown --target {cfg.target!r}; valid: {', '.join(TARGETS)}")
    if cfg.tensorrt_graph and cfg.int8 and preset != "performance":
        raise InputError("export: TensorRT INT8 needs symmetric quantization: use --preset "
                         "performance (or leave --preset unset) with --trt/--target tensorrt")
    if cfg.int8_method not in INT8_METHODS:
        raise InputError(f"export: unknown --int8-method {cfg.int8_method!r}; valid: "
                         f"{', '.join(INT8_METHODS)}")
    defaults = ExportConfig()
    for flag, value, default in (("--target", cfg.target, defaults.target),
                                 ("--int8-method", cfg.int8_method, defaults.int8_method)):
        if not cfg.int8 and value != default:  # it shapes the INT8 graph only: nothing made
            raise InputError(f"export: {flag} {value} chooses how the INT8 model is made, "
                             "but --int8 is not given (nothing INT8 would be made): add --int8")
    for flag, value in (("--batch", cfg.batch_size), ("--trt-max-batch", cfg.trt_max_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"export: {flag} must be an integer >= 1, got {value}")
    if cfg.int8 and cfg.int8_method == "modelopt":
        from deploy.modelopt import unavailable_reason

        if not cfg.tensorrt_graph:
            raise InputError("export: --int8-method modelopt builds TensorRT's INT8 graph: add "
                             "--target tensorrt (or --trt)")
        why = unavailable_reason()
        if why:
            raise InputError(f"export: --int8-method modelopt: {why}")
    if cfg.calib_stat not in CALIB_STATS:
        raise InputError(f"export: unknown --calib-stat {cfg.calib_stat!r}; valid: "
                         f"{', '.join(CALIB_STATS)}")
    if cfg.int8 and cfg.calib_images is None and cfg.calib_split == cfg.val_split:
        raise InputError(f"export: calibration split {cfg.calib_split!r} is the scored split; "
                         "calibrate on the training split (--calib-split train)")
    if cfg.threads is not None and cfg.threads < 1:
        raise InputError(f"export: --threads must be >= 1, got {cfg.threads}")
    if cfg.calib_size < 1:
        raise InputError(f"export: --calib-size must be >= 1, got {cfg.calib_size}")
    if not 0 < cfg.min_agreement <= 1:
        raise InputError(f"export: --min-agreement must be in (0, 1], got {cfg.min_agreement}")
    if cfg.calib_images is not None and cfg.holdout_every < 2:
        raise InputError(f"export: --holdout-every must be >= 2, got {cfg.holdout_every}")
    if cfg.size is not None:
        check_size(tuple(cfg.size))
    if cfg.aoti:
        _check_aoti(cfg)
    for flag, wanted in (("--executorch", cfg.executorch), ("--litert", cfg.litert)):
        if wanted and cfg.dynamic_spatial:  # the option first: it fails on every machine
            raise InputError(f"export: {flag} traces one input size: drop --dynamic-spatial")
    if cfg.executorch:
        from deploy.backends.executorch import available

        why = available("cpu")
        if why:
            raise BackendUnavailable(f"export --executorch: {why}")
    if cfg.litert:
        from deploy.backends.litert import build_unavailable

        why = build_unavailable()
        if why:
            raise BackendUnavailable(f"export --litert: {why}")
    if cfg.e2e is not None:
        from deploy.e2e import check_frame_size

        check_frame_size(tuple(cfg.e2e))
        if cfg.dynamic_spatial:
            raise InputError("export: --e2e resizes every frame to one model size: drop "
                             "--dynamic-spatial")
    return preset


def _check_aoti(cfg: ExportConfig) -> None:
    """``--aoti``'s own checks, before any work: the device, a C++ compiler, static H x W."""
    from deploy.backends.aoti import build_unavailable

    if cfg.aoti_device != "cpu" and not cfg.aoti_device.startswith("cuda"):
        raise InputError(f"export: --aoti-device {cfg.aoti_device!r}: expected cpu or cuda[:N]")
    why = build_unavailable(cfg.aoti_device)
    if why:
        raise BackendUnavailable(f"export --aoti: {why}")
    if cfg.dynamic_spatial:
        raise InputError("export: --aoti compiles one input size: drop --dynamic-spatial")


class ImageSet:
    """Some images of one split, re-iterable, read lazily.

    Iterating yields ``(image float32 [3, H, W], mask int64 [H, W] | None)``;
    :meth:`batches` yields ``(images [B, 3, H, W], masks [B, H, W] | None)``, plus
    ``depth float32 [B, H, W]`` (0 = no value) when the dataset's items carry depth
    (``with_depth``: a multi-task model's split with depth labels).
    """

    def __init__(self, dataset, indices: list[int], labelled: bool, batch_size: int = 4) -> None:
        self.dataset, self.indices, self.labelled = dataset, indices, labelled
        self.batch_size = batch_size
        self.depth = bool(getattr(dataset, "with_depth", False))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for i in self.indices:
            item = self.dataset[i]
            yield item["image"].numpy(), (item["mask"].numpy() if self.labelled else None)

    def batches(self, desc: str | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """The images in batches; ``desc``: with a progress bar of that title (on a
        terminal only)."""
        starts = range(0, len(self.indices), self.batch_size)
        if desc is not None:
            starts = tqdm(starts, desc=desc, leave=False, disable=None)
        for start in starts:
            chunk = self.indices[start:start + self.batch_size]
            items = [self.dataset[i] for i in chunk]
            images = np.stack([it["image"].numpy() for it in items])
            masks = np.stack([it["mask"].numpy() for it in items]) if self.labelled else None
            if self.depth:
                yield images, masks, np.stack([it["depth"].numpy() for it in items])
            else:
                yield images, masks

    def images_only(self) -> Iterator[np.ndarray]:
        for image, _ in self:
            yield image


class _FolderImages:
    """Images of a folder as a dataset: resized to ``size`` and normalised; ``masks`` (the
    f32 model's predictions, once set) stand in for labels."""

    def __init__(self, paths: list[Path], size: tuple[int, int], mean, std) -> None:
        self.paths, self.size, self.mean, self.std = paths, size, mean, std
        self.masks: list[np.ndarray] | None = None
        self.source = self  # the raw frames (``load``), as a dataset's source gives them

    def load(self, i: int) -> tuple[np.ndarray, None, str]:
        from compress.data.datasets import read_image

        return read_image(self.paths[i]), None, self.paths[i].stem

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from compress.data.datasets import read_image
        from compress.data.transforms import normalize, resize_pair

        image, _ = resize_pair(read_image(self.paths[i]), None, self.size)
        mask = self.masks[i] if self.masks is not None else None
        mask = torch.from_numpy(mask) if mask is not None else None
        return {"image": torch.from_numpy(normalize(image, self.mean, self.std)), "mask": mask}


def _load_folder(cfg: ExportConfig, spec: ModelSpec, size: tuple[int, int]
                 ) -> tuple[ImageSet, ImageSet, dict]:
    """``--calib-images``: (calibration set, held-back set, info); both unlabelled."""
    from compress.pseudo import list_images

    folder = Path(cfg.calib_images)
    paths, _ = list_images(folder)
    if len(paths) < 2:
        raise ExportError(f"export: --calib-images {folder} holds {len(paths)} image(s); "
                          "at least 2 are needed (one to calibrate, one held back)")
    ds = _FolderImages(paths, size, spec.mean, spec.std)
    held = [i for i in range(len(paths)) if i % cfg.holdout_every == cfg.holdout_every - 1]
    held = held or [len(paths) - 1]
    calib = [i for i in range(len(paths)) if i not in set(held)][:cfg.calib_size]
    info = {"kind": "images", "root": str(folder), "split": None, "labelled": False,
            "images": len(calib), "of": len(paths), "held_back": len(held),
            "holdout_every": cfg.holdout_every}
    return (ImageSet(ds, calib, False, cfg.eval_batch), ImageSet(ds, held, False, cfg.eval_batch),
            info)


def _label_with(reference, images: ImageSet) -> ImageSet:
    """The held-back images with the reference model's predictions as their masks."""
    from deploy.arrays import class_ids

    masks = [class_ids(reference.predict(image[None]))[0] for image in images.images_only()]
    ds = images.dataset
    full: list[np.ndarray | None] = [None] * len(ds)
    for i, m in zip(images.indices, masks):
        full[i] = m
    ds.masks = full
    return ImageSet(ds, images.indices, True, images.batch_size)


class _Reiterable:
    """Wrap a generator function so NNCF can iterate it more than once."""

    def __init__(self, fn, length: int) -> None:
        self.fn, self.length = fn, length

    def __iter__(self):
        return self.fn()

    def __len__(self) -> int:
        return self.length


def _load_split(cfg: ExportConfig, spec: ModelSpec, size: tuple[int, int], split: str, count: int | None,
                seed: int) -> tuple[ImageSet, dict]:
    from compress.data import split_images

    kind = cfg.data_kind or ("camvid" if cfg.data else "synthetic")
    if kind != "synthetic" and cfg.data is None:
        raise InputError(f"export: data kind {kind!r} needs a dataset root (--calib-data DIR)")
    n_synth = count or cfg.synthetic_val_length
    root = str(cfg.data) if cfg.data else None
    ds = split_images(kind, root, split, size=size, mean=spec.mean, std=spec.std,
                      ignore_index=spec.ignore_index, count=max(n_synth, 1),
                      depth=_depth_mode(spec, kind, root, split))
    labelled = len(ds.class_names) == spec.classes
    n = len(ds) if count is None else min(count, len(ds))
    if seed < 0 or n == len(ds):
        indices = list(range(n))
    else:  # a spread-out random subset, the same every run
        indices = sorted(np.random.default_rng(seed).choice(len(ds), n, replace=False).tolist())
    info = {"kind": kind, "root": str(cfg.data) if cfg.data else None, "split": split,
            "images": n, "of": len(ds), "class_names": list(ds.class_names),
            "labelled": labelled}
    if getattr(ds, "with_depth", False):
        info["depth_labels"] = True
    return ImageSet(ds, indices, labelled, cfg.eval_batch), info


def _depth_mode(spec: ModelSpec, kind: str, root: str | None, split: str) -> str:
    """How a multi-task model's split gets depth labels: the synthetic scenes' own dense
    depth, a folder's ``depth/<split>`` files when present; else none (and always none
    for a single-task model, whose data is read as before)."""
    from compress.data import split_has_depth
    from deploy.metadata import is_multi_output

    if not is_multi_output(spec):
        return "none"
    return split_has_depth(kind, root, split)


TMP_MARK = ".segcompress-export-tmp"  # inside every temp export dir: ours to clean up


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _mark_pid(folder: Path) -> int | None:
    try:
        return int((folder / TMP_MARK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def remove_stale_exports(parent: Path) -> list[Path]:
    """Delete the temp dirs of exports that were killed (``.<name>.tmp-*`` and
    ``.<name>.old-*`` holding our marker, whose process is gone); nothing else."""
    removed = []
    for d in list(parent.glob(".*.tmp-*")) + list(parent.glob(".*.old-*")):
        pid = _mark_pid(d) if d.is_dir() and not d.is_symlink() else None
        if pid is not None and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _ours(out: Path) -> list[Path]:
    """The files of an export dir of ours (its manifest and what it lists), or an
    ExportError naming why ``out`` is not one: --overwrite deletes only those."""
    import json

    from deploy.manifest import MANIFEST_FORMAT, MANIFEST_NAME, member, sha256_file

    mpath = out / MANIFEST_NAME
    try:
        manifest = json.loads(mpath.read_text())
        ok = isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise ExportError(f"export: --out {out} is not an export dir of ours (no segcompress "
                          f"{MANIFEST_NAME}): --overwrite replaces only those; choose another --out")
    files, digests = [mpath], {}
    try:
        for art in manifest.get("artifacts", []):
            for entry in (art, *art.get("files", [])):
                files.append(member(out, entry["file"], mpath))
                digests[files[-1]] = entry.get("sha256")
    except (ManifestError, AttributeError, KeyError, TypeError):
        raise ExportError(f"export: --out {out}: its {MANIFEST_NAME} lists files outside it "
                          "or is broken: not replacing it") from None
    # a listed file the user edited (its sha256 no longer the manifest's) is theirs now
    edited = [f.name for f, digest in digests.items()
              if f.is_file() and not f.is_symlink() and sha256_file(f) != digest]
    if edited:
        raise ExportError(f"export: --out {out}: {edited[0]!r} was changed since the export "
                          f"wrote it (its sha256 is not the one in {MANIFEST_NAME}): kept, "
                          "not replacing it; move it away or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p not in files)
    if others:
        raise ExportError(f"export: --out {out} holds {others[0]!r}"
                          + (f" and {len(others) - 1} more file(s)" if len(others) > 1 else "")
                          + " that the export did not write: not replacing it")
    return files


def _snapshot(out: Path) -> tuple:
    if not out.exists():
        return ("absent",)
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()))


def _prepare_out(out: Path, overwrite: bool) -> tuple:
    """Check ``--out`` and return a snapshot of it, compared again before the final move."""
    check_folder_path(out, "export: --out")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ExportError(f"export: --out {out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise ExportError(f"export: --out {out} is not empty (use --overwrite to "
                                  "replace an earlier export)")
            _ours(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _snapshot(out)


class _Lock:
    """``.<out>.lock`` beside ``--out`` while an export writes it: a second export to the
    same ``--out`` stops at once instead of silently replacing the first."""

    def __init__(self, out: Path) -> None:
        self.out, self.path = out, out.with_name(f".{out.name}.lock")

    def __enter__(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _mark_pid_file(self.path)
                if pid is not None and not _pid_alive(pid):  # left by a killed export
                    self.path.unlink(missing_ok=True)
                    continue
                raise ExportError(f"export: another export to {self.out} is running (pid "
                                  f"{pid}, lock {self.path})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return
        raise ExportError(f"export: cannot take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        if _mark_pid_file(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)


def _mark_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _move_into_place(tmp: Path, out: Path, before: tuple) -> None:
    """Move the finished export into ``out`` atomically; refuse if ``out`` appeared or
    changed since the export began (its files are left as they are)."""
    import errno

    if _snapshot(out) != before:
        raise ExportError(f"export: --out {out} appeared or changed while exporting: left "
                          "as it is, nothing written")
    (tmp / TMP_MARK).unlink(missing_ok=True)
    if before == ("absent",) or before == ():
        try:
            os.rename(tmp, out)  # onto nothing or an empty dir; fails on a non-empty one
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise ExportError(f"export: --out {out} appeared while exporting: left as "
                                  "it is, nothing written") from None
            raise
        return
    files = _ours(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    (old / TMP_MARK).write_text(f"{os.getpid()}\n")
    tmp.rename(out)
    for f in files:  # only what the previous export wrote
        (old / f.name).unlink(missing_ok=True)
    (old / TMP_MARK).unlink(missing_ok=True)
    try:
        old.rmdir()
    except OSError:
        pass  # something else appeared in it: kept


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{v * 100:.2f}" if pct else f"{v:.3g}"


def export_checkpoint(checkpoint: str | Path, out: str | Path, cfg: ExportConfig,
                      log: Log | None = None) -> dict[str, Any]:
    """Export a checkpoint to a verified export directory with a manifest.

    Args:
        checkpoint: a segcompress checkpoint (``best.pt``).
        out: the export directory (created; must be empty unless ``cfg.overwrite``).
        cfg: what to build.
        log: called with one progress line per step.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        BackendUnavailable: ``cfg.trt`` without TensorRT or a GPU (raised before any work).
        ExportError, VerificationError, QuantizationError, DeployError: the step that
            failed, with the reason; nothing is left in ``out``.
    """
    log = log or (lambda msg: None)
    checkpoint, out = Path(checkpoint), Path(out)
    preset = validate_config(cfg)  # before anything is read or written
    before = _prepare_out(out, cfg.overwrite)

    import torch

    from compress.models import load_model
    from deploy.manifest import new_manifest, sha256_file

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, spec = load_model(checkpoint, return_spec=True)
    source_sha = sha256_file(checkpoint)
    qat = _qat_model(checkpoint, cfg) if cfg.int8 else None
    if qat is not None:
        preset = qat[1]
        for flag, wanted in (("--executorch", cfg.executorch), ("--litert", cfg.litert)):
            if wanted:
                raise ExportError(f"export: {checkpoint} is a QAT checkpoint: its {flag} INT8 "
                                  f"model is not built yet; drop {flag} or --int8")
    size = tuple(cfg.size or spec.input_size)
    check_size(size)
    if cfg.e2e is not None:
        from deploy.e2e import refusal

        why = refusal(spec)
        if why:
            raise ExportError(f"export: {checkpoint}: {why}")

    calib = calib_info = None
    if cfg.calib_images is not None and cfg.data is None:
        # unlabelled: calibrate on most of the folder, verify on the images held back
        calib, val, calib_info = _load_folder(cfg, spec, size)
        val_info = {**calib_info, "images": len(val), "role": "held back from --calib-images"}
    else:
        val, val_info = _load_split(cfg, spec, size, cfg.val_split, cfg.val_size, seed=-1)
        if cfg.calib_images is not None:
            calib, _, calib_info = _load_folder(cfg, spec, size)
    class_names = spec.class_names if val.labelled else None
    if cfg.int8 and calib is None and qat is None:  # a QAT checkpoint needs no calibration
        if not val.labelled:
            raise QuantizationError(
                f"quantize: the model has {spec.classes} classes but the "
                f"{val_info['kind']} data has {len(val_info['class_names'])}: INT8 needs "
                "labelled images like the model's own (--calib-data DIR, --data-kind) to "
                "calibrate and to check the mIoU budget, or a folder of unlabelled images "
                "(--calib-images DIR)")
        calib, calib_info = _load_split(cfg, spec, size, cfg.calib_split, cfg.calib_size, seed=0)
    where = val_info["root"] if val_info["kind"] == "images" else f"{val_info['kind']} {cfg.val_split}"
    log(f"data: {where} ({len(val)} images) for verification"
        + (f", {len(calib)} images for calibration" if cfg.int8 and calib else ""))

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    options.update(size=list(size), preset=preset if cfg.int8 else None)
    manifest = new_manifest(checkpoint, source_sha, spec, options,
                            {"verification": val_info, "calibration": calib_info},
                            registry.packages())
    with _Lock(out):
        remove_stale_exports(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the export is not
        (tmp / TMP_MARK).write_text(f"{os.getpid()}\n")
        try:
            _build(model, spec, size, cfg, preset, val, calib, class_names, manifest, tmp, log,
                   qat[0] if qat else None)
            from deploy.manifest import write_manifest

            write_manifest(tmp, manifest)
            _move_into_place(tmp, out, before)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _qat_model(checkpoint: Path, cfg: ExportConfig):
    """``(fake-quantized model, preset)`` of a QAT checkpoint, or None for any other."""
    from compress.qat import load_qat_model

    loaded = load_qat_model(checkpoint)
    if loaded is None:
        return None
    model, _, state = loaded
    if cfg.preset and cfg.preset != state["preset"]:
        raise ExportError(f"export: {checkpoint} was trained quantization-aware with the "
                         f"{state['preset']} preset; --preset {cfg.preset} would need PTQ of "
                         "its float weights (export another checkpoint, or drop --preset)")
    if cfg.tensorrt_graph:
        raise ExportError(f"export: {checkpoint} is a QAT checkpoint: its TensorRT INT8 graph "
                         "(--trt / --target tensorrt) is not built yet; export its float "
                         "weights from a non-QAT checkpoint, or use the CPU target")
    return model, state["preset"]


def _build(model, spec, size, cfg: ExportConfig, preset: str, val: ImageSet,
           calib: ImageSet | None, class_names, manifest: dict, tmp: Path, log: Log,
           qat_model=None) -> None:
    from deploy.export import (
        compare,
        export_onnx,
        export_spec,
        input_shape,
        verify_onnx,
    )
    from deploy.manifest import artifact_entry
    from deploy.metadata import output_info, output_names
    from deploy.runtime import backend_for_path, load_runtime

    ignore = spec.ignore_index
    out_spec = export_spec(spec, size, cfg.argmax)
    manifest["spec"] = out_spec.to_dict()
    output = out_spec.output
    shape = input_shape(size, cfg.batch_size, cfg.dynamic_batch, cfg.dynamic_spatial)
    names = output_names(out_spec)
    common = {"input_name": "images", "input_shape": shape, "output": output,
              "output_name": names[0], "spec": out_spec}
    if len(names) > 1:  # a multi-task graph: every named output (a single-task entry as before)
        common["outputs"] = output_info(out_spec, shape)

    def add(path: Path, precision: str, **extra) -> dict:
        backend = backend_for_path(path)  # the registry's backend for the file's suffix
        entry = artifact_entry(path, backend=backend.name, precision=precision,
                               companions=backend.companions(path), **{**common, **extra})
        manifest["artifacts"].append(entry)
        return entry

    def leave_out(file: str, reason: str) -> None:  # asked for, not kept: said, and recorded
        manifest.setdefault("left_out", []).append({"file": file, "reason": reason})
        log(f"left out: {file}: {reason}")

    # ONNX f32: export, check, simplify, verify against PyTorch
    onnx_path = tmp / "model.onnx"
    export_onnx(model, onnx_path, spec, size=size, opset=cfg.opset, batch_size=cfg.batch_size,
                dynamic_batch=cfg.dynamic_batch, dynamic_spatial=cfg.dynamic_spatial,
                argmax=cfg.argmax)
    res = verify_onnx(onnx_path, model, val.batches("verify ONNX"), min_agreement=cfg.min_agreement,
                      class_names=class_names, ignore_index=ignore, threads=cfg.threads,
                      reference_name="pytorch")
    verification = {"reference": "pytorch", "data": f"{cfg.val_split} split", **res}
    add(onnx_path, "f32", verification=verification)
    log(f"onnx: {onnx_path.name} agrees with PyTorch on {_fmt(res['agreement'])}% of pixels, "
        f"max |diff| {_fmt(res['max_abs_diff'], False)}, mIoU PyTorch "
        f"{_fmt(verification['miou_pytorch'])} / ONNX {_fmt(res['miou'])}")
    _log_dense(res, "onnx", "PyTorch", log)
    reference = load_runtime(onnx_path, threads=cfg.threads)
    budget = "labels"
    if cfg.int8 and not val.labelled:  # unlabelled images: the f32 model's own predictions
        val, class_names, budget = _label_with(reference, val), spec.class_names, \
            "fp32-predictions"
        log(f"int8: no labels: the budget is mIoU against the f32 model's predictions on "
            f"{len(val)} held-back images")

    def check(candidate, enforce: bool, what: str) -> dict:
        # every named output (a multi-task graph's depth too); the budget stays on seg
        r = compare(reference.run_outputs, candidate.run_outputs, val.batches(f"verify {what}"),
                    class_names, ignore, reference_name="f32")
        r = {"reference": "onnxruntime f32", "data": f"{cfg.val_split} split", **r}
        if enforce and not r["agreement"] >= cfg.min_agreement:
            raise VerificationError(
                f"verify: {what} agrees with the f32 ONNX model on {r['agreement'] * 100:.3f}% "
                f"of pixels, below the required {cfg.min_agreement * 100:.3f}%; nothing was kept")
        _log_dense(r, what, "f32", log)
        return r

    int8_path = None
    if cfg.int8:
        int8_path = tmp / "model_int8.onnx"
        if qat_model is not None:
            info = _qat_int8(qat_model, int8_path, spec, size, cfg, preset, val, class_names,
                             ignore, check, load_runtime, log)
        else:
            info = _quantize(onnx_path, int8_path, cfg, preset, calib, val, class_names,
                             ignore, check, load_runtime, log)
        info["budget"] = budget
        extra = {}
        if cfg.tensorrt_graph:
            import onnx

            from deploy.backends.tensorrt import check_qdq_graph

            graph = check_qdq_graph(onnx.load(str(int8_path)))
            extra["tensorrt_graph"] = graph
            log(f"int8: TensorRT graph: {graph['quantize_nodes']} Q/DQ pairs, all signed "
                f"symmetric (zero points 0); {graph['weighted_quantized']} of "
                f"{graph['weighted_layers']} weighted layers quantized")
        add(int8_path, "int8", verification=info.pop("verification"),
            quantization=info, target="tensorrt" if cfg.tensorrt_graph else "cpu", **extra)

    if cfg.openvino:
        from deploy.backends.openvino import convert_to_openvino

        xml = convert_to_openvino(onnx_path, tmp / "model.xml", out_spec)
        strict = load_runtime(xml, threads=cfg.threads, precision="f32")
        r = check(strict, True, "OpenVINO (f32)")
        default = load_runtime(xml, threads=cfg.threads)
        r["precision_default_here"] = default.precision
        if default.precision != "f32":
            d = check(default, False, f"OpenVINO ({default.precision})")
            r["agreement_default_precision"] = d["agreement"]
            r["miou_default_precision"] = d["miou"]
        add(xml, "f32", verification=r,
            openvino={"layer_precisions_default": default.info.get("layer_precisions")})
        log(f"openvino: {xml.name} agrees with ONNX f32 on {_fmt(r['agreement'])}% of pixels "
            f"(forced f32); runs as {default.precision} by default here"
            + (f" ({_fmt(r.get('agreement_default_precision'))}% agreement)"
               if default.precision != "f32" else ""))
        if int8_path is not None:
            xml8 = convert_to_openvino(int8_path, tmp / "model_int8.xml", out_spec)
            rt8 = load_runtime(xml8, threads=cfg.threads)
            if rt8.precision != "int8":
                raise QuantizationError(f"openvino: {xml8.name} does not run in int8 here "
                                        f"(runs as {rt8.precision})")
            r8 = check(rt8, False, "OpenVINO (int8)")
            add(xml8, "int8", verification=r8,
                openvino={"layer_precisions": rt8.info.get("layer_precisions")})
            log(f"openvino: {xml8.name} runs in int8; agreement with f32 {_fmt(r8['agreement'])}%"
                f", mIoU {_fmt(r8['miou'])} (f32 {_fmt(r8['miou_f32'])})")

    if cfg.e2e is not None:
        _frame_graphs(cfg, tmp, out_spec, reference, int8_path, val, class_names, ignore, add,
                      load_runtime, log)
    if cfg.aoti:
        _aoti(model, out_spec, size, cfg, tmp, add, check, log)
    for backend, wanted in (("executorch", cfg.executorch), ("litert", cfg.litert)):
        if wanted:
            _compiled(backend, model, Path(manifest["source_checkpoint"]), out_spec, size, cfg,
                      tmp, add, check, calib, leave_out, log)
    if cfg.trt:
        _tensorrt(onnx_path, int8_path, size, cfg, tmp, add, check, manifest, log)


def _aoti(model, out_spec: ModelSpec, size, cfg: ExportConfig, tmp: Path, add, check,
          log: Log) -> None:
    """``model.pt2``: the PyTorch model compiled by AOTInductor, verified against the
    f32 ONNX model like every other artifact (on the CPU; a CUDA package is checked where
    it runs)."""
    import torch

    from deploy.backends.aoti import AotiRuntime, compile_pt2
    from deploy.export import ExportHead

    device = "cuda" if cfg.aoti_device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    pt2 = compile_pt2(ExportHead(model, cfg.argmax), tmp / "model.pt2", size, cfg.batch_size,
                      cfg.dynamic_batch, device)
    seconds = time.perf_counter() - t0
    model.to("cpu")
    rt = AotiRuntime(pt2, out_spec, cfg.aoti_device, cfg.threads, built_for=device)
    r = check(rt, True, "AOTInductor (f32)")
    add(pt2, "f32", verification=r, aoti={"device": device, "torch": torch.__version__,
                                          "compile_seconds": round(seconds, 1)})
    log(f"aoti: {pt2.name} ({device}, compiled in {seconds:.0f} s) agrees with ONNX f32 on "
        f"{_fmt(r['agreement'])}% of pixels, mIoU {_fmt(r['miou'])}")


def _lower_executorch(model, checkpoint: Path, dst: Path, size, cfg: ExportConfig, images):
    from deploy.backends.executorch import build_pte
    from deploy.export import ExportHead

    return build_pte(ExportHead(model, cfg.argmax).eval(), dst, size, cfg.batch_size, images)


def _convert_litert(model, checkpoint: Path, dst: Path, size, cfg: ExportConfig, images):
    from deploy.backends.litert import convert_tflite

    return convert_tflite(checkpoint, dst, size, cfg.batch_size, cfg.argmax, images, cfg.threads)


# the backends built from the PyTorch model at one input shape, f32 and PT2E INT8:
# name -> (builder, whose PT2E quantizer makes their INT8 model)
PT2E_SCHEME = "symmetric, per-channel weights, static activations"
_COMPILED = {
    "executorch": (_lower_executorch, f"pt2e (executorch XNNPACKQuantizer, {PT2E_SCHEME})"),
    "litert": (_convert_litert, f"pt2e (litert-torch PT2EQuantizer, {PT2E_SCHEME})"),
}


def _compiled(name: str, model, checkpoint: Path, out_spec: ModelSpec, size, cfg: ExportConfig,
              tmp: Path, add, check, calib: ImageSet | None, leave_out, log: Log) -> None:
    """ExecuTorch's ``model.pte`` / LiteRT's ``model.tflite`` (and their ``_int8`` forms
    with ``--int8``): the student traced at the export's batch and size (a fixed input
    shape), verified against the f32 ONNX model like every artifact; the INT8 one (PT2E,
    calibrated on the NNCF path's images) under the same ``--max-drop`` budget. An INT8
    model over that budget (PT2E has no accuracy control here) or one the converter
    cannot build (a quantizer constraint it cannot meet) is left out: ``leave_out(file,
    reason)`` says so in the log and in the manifest's ``left_out``; the rest is kept."""
    from deploy.runtime import get_backend

    backend = get_backend(name)
    build, method = _COMPILED[name]
    shape = [cfg.batch_size, 3, *size]  # traced at one batch: fixed
    jobs = [("f32", None)] + ([("int8", calib)] if cfg.int8 and calib is not None else [])
    for precision, images in jobs:
        dst = tmp / backend.artifact_name(precision)
        t0 = time.perf_counter()
        try:
            build(model, checkpoint, dst, size, cfg, images.images_only() if images else None)
        except DeployError as e:
            if images is None:  # the f32 model: the export fails
                raise
            # INT8 where the backend's quantizer allows: said, the rest of the export kept
            dst.unlink(missing_ok=True)
            leave_out(dst.name, f"its INT8 conversion failed ({e})")
            continue
        seconds = time.perf_counter() - t0
        rt = backend.load(dst, out_spec, {"precision": precision, "input_shape": shape}, "cpu",
                          cfg.threads, None)
        r = check(rt, precision == "f32", f"{backend.label} ({precision})")
        extra = {}
        if images is not None:
            drop = ((r["miou_f32"] - r["miou"]) * 100 if r.get("miou") is not None
                    and r.get("miou_f32") is not None else 0.0)
            if drop > cfg.max_drop:
                del rt
                dst.unlink(missing_ok=True)
                leave_out(dst.name, f"INT8 mIoU drop {drop:.2f} points exceeds --max-drop "
                                    f"{cfg.max_drop:g} (f32 {_fmt(r['miou_f32'])}, int8 "
                                    f"{_fmt(r['miou'])}); PT2E has no accuracy control here")
                continue
            extra["quantization"] = {"method": method, "calibration_images": len(images),
                                     "max_drop_points": cfg.max_drop, "miou_drop_points": drop}
        add(dst, precision, verification=r, input_shape=shape,
            **{name: {"delegate": "XNNPACK", "build_seconds": round(seconds, 1)}}, **extra)
        log(f"{name}: {dst.name} (XNNPACK, built in {seconds:.0f} s) agrees with ONNX f32 on "
            f"{_fmt(r['agreement'])}% of pixels, mIoU {_fmt(r['miou'])}")


def _frame_graphs(cfg: ExportConfig, tmp: Path, out_spec: ModelSpec, onnx_rt,
                  int8_path: Path | None, val: ImageSet, class_names, ignore: int, add,
                  load_runtime, log: Log) -> None:
    """``--e2e HxW``: the frame-to-map graph (:mod:`deploy.e2e`) of ``model.onnx`` and of
    each other form asked for (INT8, OpenVINO), each verified on the raw frames of the
    scored split against the Python pipeline around its model-only form (the f32 ones
    held to ``--min-agreement``; mIoU against the labels at the frame size)."""
    from deploy.e2e import INPUT_NAME, FrameSet, frame_spec, python_pipeline, write_frame_graph
    from deploy.export import compare, input_shape
    from deploy.runtime import backend_for_path

    frame = tuple(cfg.e2e)
    spec = frame_spec(out_spec, frame)
    frames = FrameSet(val.dataset, val.indices, val.labelled, frame, cfg.eval_batch)
    shape = input_shape(frame, cfg.batch_size, cfg.dynamic_batch, False)
    shape = [shape[0], *frame, 3]
    entry = {"input_name": INPUT_NAME, "input_shape": shape, "output": "argmax",
             "output_name": "classes", "spec": spec}
    src_h, src_w = frames.source_size()
    details = {"frame_size": list(frame), "model_size": list(out_spec.input_size),
               "source_size": [src_h, src_w], "graph": "onnx operators",
               "steps": "uint8 NHWC -> bilinear resize (half-pixel), round -> "
                        "(pixel / 255 - mean) / std -> model -> argmax -> nearest resize "
                        "-> uint8 class ids"}
    if (src_h, src_w) != frame:
        log(f"e2e: the {cfg.val_split} frames are {src_h}x{src_w}: resized to the camera's "
            f"{frame[0]}x{frame[1]} before verification (as such a camera would give them)")

    def verify(path: Path, model_only, precision: str, enforce: bool, what: str):
        # a backend that picks its float precision at load time is held to f32 for an f32 file
        holds = backend_for_path(path).sets_precision and precision == "f32"
        rt = load_runtime(path, threads=cfg.threads, precision="f32" if holds else None)
        reference = python_pipeline(model_only.predict, out_spec, frame)
        r = compare(reference, rt.predict, frames.batches(f"verify {what}"), class_names,
                    ignore, reference_name="python_pipeline")
        r = {"reference": f"python pipeline around {model_only.path.name}",
             "data": f"{cfg.val_split} split frames at {frame[0]}x{frame[1]}", **r}
        if enforce and not r["agreement"] >= cfg.min_agreement:
            raise VerificationError(
                f"verify: {what} agrees with the Python pipeline around {model_only.path.name} "
                f"on {r['agreement'] * 100:.3f}% of pixels, below the required "
                f"{cfg.min_agreement * 100:.3f}%; nothing was kept")
        add(path, precision, verification=r, e2e=details, **entry)
        log(f"e2e: {path.name} ({what}, frames {frame[0]}x{frame[1]} in, class map out): "
            f"agrees with the Python pipeline on {_fmt(r['agreement'])}% of pixels, mIoU "
            f"{_fmt(r['miou'])} (pipeline {_fmt(r.get('miou_python_pipeline'))})")

    # onnx_rt: the f32 ONNX runtime the export already loaded as every artifact's reference
    e2e_onnx = write_frame_graph(onnx_rt.path, tmp / "model_e2e.onnx", out_spec, frame)
    verify(e2e_onnx, onnx_rt, "f32", True, "ONNX f32")
    e2e_int8 = None
    if int8_path is not None:
        e2e_int8 = write_frame_graph(int8_path, tmp / "model_e2e_int8.onnx", out_spec, frame)
        verify(e2e_int8, load_runtime(int8_path, threads=cfg.threads), "int8", False,
               "INT8 ONNX")
    if cfg.openvino:
        from deploy.backends.openvino import convert_to_openvino

        xml = convert_to_openvino(e2e_onnx, tmp / "model_e2e.xml", spec)
        verify(xml, load_runtime(tmp / "model.xml", threads=cfg.threads, precision="f32"),
               "f32", True, "OpenVINO f32")
        if e2e_int8 is not None:
            xml8 = convert_to_openvino(e2e_int8, tmp / "model_e2e_int8.xml", spec)
            verify(xml8, load_runtime(tmp / "model_int8.xml", threads=cfg.threads), "int8",
                   False, "OpenVINO int8")


def _log_dense(res: dict, what: str, reference: str, log: Log) -> None:
    """One line per dense output (depth) of a multi-task comparison: its difference from
    the reference and, with depth labels, its RMSE beside the reference's."""
    for name, r in res.get("outputs", {}).items():
        if r.get("kind") == "segmentation":
            continue
        gt = ""
        if r.get("rmse") is not None:
            key = f"rmse_{'pytorch' if reference == 'PyTorch' else reference}"
            ref = r.get(key)
            gt = (f", RMSE vs labels {r['rmse']:.4g} ({reference} "
                  f"{'n/a' if ref is None else format(ref, '.4g')}), "
                  f"AbsRel {r['abs_rel']:.4g}, delta1 {_fmt(r['delta1'])}%")
        log(f"{what}: {name}: max |diff| {_fmt(r['max_abs_diff'], False)}, RMSE vs "
            f"{reference} {_fmt(r['rmse_vs_reference'], False)}{gt}")


def _quantize(onnx_path: Path, int8_path: Path, cfg: ExportConfig, preset: str, calib: ImageSet,
              val: ImageSet, class_names, ignore: int, check, load_runtime, log: Log) -> dict:
    import onnx

    from deploy.quantize import (
        float_layers_of,
        quantize_int8,
        quantize_int8_with_accuracy_control,
        quantized_layers,
    )

    fp32 = onnx.load(str(onnx_path))
    calib_images = _Reiterable(calib.images_only, len(calib))
    common = {"preset": preset, "calib_stat": cfg.calib_stat, "subset_size": len(calib),
              "float_layers": cfg.float_layers,
              "target": "tensorrt" if cfg.tensorrt_graph else "cpu"}
    source = "--calib-images" if cfg.calib_images else cfg.calib_split
    if cfg.int8_method == "modelopt":
        from deploy.modelopt import quantize_int8_modelopt

        q = quantize_int8_modelopt(onnx_path, calib.images_only(), float_layers=cfg.float_layers)
        method, preset, calib_stat = "modelopt.onnx.quantization", None, "entropy"
        how = "ModelOpt ONNX PTQ (entropy"
    else:
        q = quantize_int8(fp32, calib_images, **common)
        method, calib_stat = "nncf.quantize", cfg.calib_stat
        how = f"nncf.quantize ({preset}, {cfg.calib_stat}"
    onnx.save(q, str(int8_path))
    r = check(load_runtime(int8_path, threads=cfg.threads), False, "INT8 ONNX")
    drop = (r["miou_f32"] - r["miou"]) * 100
    log(f"int8: {how}, {len(calib)} {source} images): mIoU {_fmt(r['miou'])} vs f32 "
        f"{_fmt(r['miou_f32'])} (drop {drop:.2f} points, budget {cfg.max_drop:g}); agreement "
        f"{_fmt(r['agreement'])}%")
    restored: list[str] = []
    if drop > cfg.max_drop and cfg.int8_method == "modelopt":
        raise QuantizationError(
            f"quantize: INT8 mIoU drop {drop:.2f} points exceeds --max-drop {cfg.max_drop:g} "
            f"(f32 {_fmt(r['miou_f32'])}, int8 {_fmt(r['miou'])}) and ModelOpt has no accuracy "
            "control: keep layers in float with --keep-float NODE, or use --int8-method nncf; "
            "nothing was written")
    if drop > cfg.max_drop:
        if not cfg.accuracy_control:
            raise QuantizationError(
                f"quantize: INT8 mIoU drop {drop:.2f} points exceeds --max-drop "
                f"{cfg.max_drop:g} (f32 {_fmt(r['miou_f32'])}, int8 {_fmt(r['miou'])}); "
                "nothing was written")
        log("int8: over budget: nncf.quantize_with_accuracy_control returns the most "
            "sensitive layers to float")
        q2 = quantize_int8_with_accuracy_control(
            fp32, calib_images, val, class_names=class_names, ignore_index=ignore,
            max_drop=cfg.max_drop / 100, max_float_layers=cfg.max_float_layers, **common)
        restored = sorted(quantized_layers(q) - quantized_layers(q2))
        onnx.save(q2, str(int8_path))
        r = check(load_runtime(int8_path, threads=cfg.threads), False, "INT8 ONNX")
        drop = (r["miou_f32"] - r["miou"]) * 100
        method = "nncf.quantize_with_accuracy_control"
        log(f"int8: {len(restored)} layer(s) back in float ({', '.join(restored) or 'none'}): "
            f"mIoU {_fmt(r['miou'])}, drop {drop:.2f} points")
        if drop > cfg.max_drop:
            raise QuantizationError(
                f"quantize: INT8 mIoU drop {drop:.2f} points still exceeds --max-drop "
                f"{cfg.max_drop:g} with {len(restored)} layer(s) kept in float "
                f"(f32 {_fmt(r['miou_f32'])}, int8 {_fmt(r['miou'])}); nothing was written")
        q = q2
    return {
        "method": method,
        "preset": preset,
        "calib_stat": calib_stat,
        "calibration_images": len(calib),
        "calibration_split": None if cfg.calib_images else cfg.calib_split,
        "calibration_images_dir": str(cfg.calib_images) if cfg.calib_images else None,
        "target": common["target"],
        "max_drop_points": cfg.max_drop,
        "miou_drop_points": drop,
        "float_layers": sorted(set(cfg.float_layers) | set(restored)),
        "float_layers_all": float_layers_of(q),
        "quantized_layers": len(quantized_layers(q)),
        "verification": r,
    }


def _qat_int8(qat_model, int8_path: Path, spec: ModelSpec, size, cfg: ExportConfig, preset: str,
              val: ImageSet, class_names, ignore: int, check, load_runtime, log: Log) -> dict:
    """The INT8 QDQ ONNX of a QAT checkpoint: its trained quantizers exported as
    QuantizeLinear/DequantizeLinear pairs (no calibration), scored like PTQ's."""
    import onnx

    from compress.qat import set_qdq_export
    from deploy.export import compare, export_onnx, torch_predictor
    from deploy.quantize import float_layers_of, quantized_layers

    n = set_qdq_export(qat_model)
    export_onnx(qat_model, int8_path, spec, size=size, opset=cfg.opset,
                batch_size=cfg.batch_size, dynamic_batch=cfg.dynamic_batch,
                dynamic_spatial=cfg.dynamic_spatial, argmax=cfg.argmax)
    rt = load_runtime(int8_path, threads=cfg.threads)
    r = check(rt, False, "INT8 ONNX (QAT)")
    torch_side = compare(torch_predictor(qat_model, cfg.argmax), rt.predict, val.batches("verify QAT"),
                         class_names, ignore)
    r["agreement_with_pytorch_qat"] = torch_side["agreement"]
    drop = (r["miou_f32"] - r["miou"]) * 100 if r.get("miou") is not None else 0.0
    log(f"int8: QAT ({preset}, {n} trained quantizers) exported as QDQ: mIoU {_fmt(r['miou'])} "
        f"vs its float weights {_fmt(r['miou_f32'])} (drop {drop:.2f} points, budget "
        f"{cfg.max_drop:g}); agreement {_fmt(r['agreement'])}% with f32, "
        f"{_fmt(torch_side['agreement'])}% with the PyTorch QAT model")
    if drop > cfg.max_drop:
        raise QuantizationError(
            f"quantize: the QAT model's INT8 mIoU drop {drop:.2f} points exceeds --max-drop "
            f"{cfg.max_drop:g} (float {_fmt(r['miou_f32'])}, int8 {_fmt(r['miou'])}); nothing "
            "was written")
    q = onnx.load(str(int8_path))
    return {"method": "qat (nncf, trained quantizers)", "preset": preset, "calib_stat": None,
            "calibration_images": 0, "calibration_split": None, "calibration_images_dir": None,
            "target": "cpu", "max_drop_points": cfg.max_drop, "miou_drop_points": drop,
            "float_layers": [], "float_layers_all": float_layers_of(q),
            "quantized_layers": len(quantized_layers(q)), "verification": r}


def _tensorrt(onnx_path: Path, int8_path: Path | None, size, cfg: ExportConfig, tmp: Path, add,
              check, manifest: dict, log: Log) -> None:
    from deploy.backends.tensorrt import TensorRTRuntime, build_engine, gpu_environment
    from deploy.manifest import sha256_file

    h, w = size
    b = cfg.batch_size
    if cfg.dynamic_spatial:
        lo = (max(32, h // 2 // 32 * 32), max(32, w // 2 // 32 * 32))
        hi = (h * 2, w * 2)
    else:
        lo = hi = (h, w)
    shapes = ((1 if cfg.dynamic_batch else b, 3, *lo), (b, 3, h, w),
              (max(cfg.trt_max_batch, b) if cfg.dynamic_batch else b, 3, *hi))
    manifest["environment"]["gpu"] = gpu_environment()
    jobs = [("fp16", onnx_path, tmp / "model_fp16.engine")]
    if int8_path is not None:
        jobs.append(("int8", int8_path, tmp / "model_int8.engine"))
    for precision, src, dst in jobs:
        info = build_engine(src, dst, precision=precision, shapes=shapes,
                            workspace_gib=cfg.trt_workspace_gib, timing_cache=cfg.trt_timing_cache)
        rt = TensorRTRuntime(dst, ModelSpec.from_dict(manifest["spec"]), "cuda",
                             entry={"precision": precision})
        r = check(rt, False, f"TensorRT ({precision})")
        add(dst, precision, verification=r, tensorrt=info, source=src.name,
            source_sha256=sha256_file(src))
        log(f"tensorrt: {dst.name} ({info.get('gpu')}, TensorRT {info.get('tensorrt')}): "
            f"agreement with f32 {_fmt(r['agreement'])}%, mIoU {_fmt(r['miou'])}")
        if r["agreement"] < cfg.min_agreement:
            log(f"tensorrt: note: {precision} agreement is below {cfg.min_agreement * 100:.1f}%")
