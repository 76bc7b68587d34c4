"""What every backend shares: the ``Runtime`` base class, the ``Backend`` description a
backend module exports as ``BACKEND``, and the one precision vocabulary (canonical names
and their aliases). Imports no backend, so the backends and the registry
(:mod:`deploy.runtime`) both build on it without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import InputError
from compress.spec import ModelSpec
from deploy.errors import BackendUnavailable, DeployError, ManifestError
from deploy.metadata import output_names

INSTALL_GPU = "pip install 'segcompress[gpu]'"  # the install hint of every GPU backend

# ---------------------------------------------------------------- precisions

PRECISIONS = ("f32", "bf16", "fp16", "int8")
# every spelling met in options, manifests and backends' own reports -> its canonical name
PRECISION_ALIASES = {
    "f32": "f32", "fp32": "f32", "float32": "f32", "float": "f32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "f16": "fp16", "float16": "fp16", "half": "fp16",
    "int8": "int8", "i8": "int8",
}


def normalize_precision(precision: str | None) -> str | None:
    """Canonical precision name (``f32``, ``bf16``, ``fp16``, ``int8``) or None.

    Raises:
        InputError: a name that is no precision (the valid ones listed).
    """
    if precision is None:
        return None
    key = str(precision).lower()
    if key not in PRECISION_ALIASES:
        raise InputError(f"runtime: unknown precision {precision!r}; valid: "
                         f"{', '.join(PRECISIONS)}")
    return PRECISION_ALIASES[key]


def canonical_precision(precision: Any) -> str | None:
    """Like :func:`normalize_precision` for names read back from files and backends: an
    OpenVINO type (``<Type: 'float32'>``) is unwrapped, and a name that is no known
    precision comes back lower-cased instead of raising."""
    if precision is None:
        return None
    key = str(precision).lower().replace("<type: '", "").rstrip("'>")
    return PRECISION_ALIASES.get(key, key)


# ---------------------------------------------------------------- runtime


class Runtime:
    """A loaded model: ``predict(images) -> logits`` (or class ids), and
    ``run_outputs(images) -> {name: array}`` with every named output of a multi-task
    model (``seg``, ``depth``); ``predict`` is always the segmentation output.

    Attributes:
        path: the file loaded.
        spec: the model spec; ``spec.output`` is ``"logits"`` or ``"argmax"``.
        backend: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``.
        precision: what really executes (``f32``, ``bf16``, ``fp16``, ``int8``).
        device: where it runs (``cpu``, ``cuda``, ``CPU``...).
        info: backend details (provider, per-layer precisions, GPU name...).
    """

    backend = "none"

    def __init__(self, path: Path, spec: ModelSpec, device: str, precision: str,
                 info: dict[str, Any] | None = None) -> None:
        self.path, self.spec, self.device, self.precision = path, spec, device, precision
        self.info = info or {}

    @property
    def output(self) -> str:
        return self.spec.output or "logits"

    @property
    def output_names(self) -> list[str]:
        """The model's outputs in graph order, segmentation first (``["logits"]``,
        ``["classes"]``, or ``["seg", "depth"]`` for a multi-task model)."""
        return output_names(self.spec)

    def predict(self, images: np.ndarray, check: bool = True) -> np.ndarray:
        """``float32 [N, 3, H, W]`` normalised -> ``float32 [N, C, H, W]`` logits, or
        ``int64 [N, H, W]`` class ids when ``spec.output == "argmax"`` (a frame-to-map
        graph: uint8 frames ``[N, H, W, 3]`` -> ``int64 [N, H, W]`` ids): the segmentation
        output alone, for single- and multi-task models alike. ``check``: refuse NaN/inf
        outputs (off only inside a timing loop, after a checked first run)."""
        return next(iter(self.run_outputs(images, check).values()))

    def run_outputs(self, images: np.ndarray, check: bool = True) -> dict[str, np.ndarray]:
        """Every output by name (:attr:`output_names`, in that order): the segmentation
        output as :meth:`predict` gives it, a dense task's (``depth``) float32 ``[N, H, W]``.

        Raises:
            DeployError: an output holding NaN or inf (with ``check``): argmax of NaN
                logits is class 0, so such a model would be scored as if it worked.
        """
        images = self._checked_input(images)
        names = self.output_names
        outs = self._outputs(images)
        missing = [n for n in names if n not in outs]
        if missing:
            raise DeployError(f"runtime: {self.path.name} gave outputs {sorted(outs)}, "
                              f"not {missing[0]!r}")
        seg = np.int64 if self.output == "argmax" else np.float32
        result = {n: np.asarray(outs[n]).astype(seg if i == 0 else np.float32)
                  for i, n in enumerate(names)}
        bad = [n for n, a in result.items() if a.dtype == np.float32
               and not np.isfinite(a).all()] if check else []
        if bad:
            raise DeployError(f"runtime: {self.path} gave NaN/inf values in its {bad[0]!r} "
                              f"output for input {list(images.shape)}: refusing its results "
                              "(non-finite weights?)")
        return result

    def _checked_input(self, images: np.ndarray) -> np.ndarray:
        """The input as the graph takes it: normalised float32 ``[N, 3, H, W]``, or for a
        frame-to-map graph (``spec.frame_size``) camera frames uint8 ``[N, H, W, 3]`` of
        that size."""
        frame = self.spec.frame_size
        if frame is None:
            images = np.ascontiguousarray(images, dtype=np.float32)
            if images.ndim != 4 or images.shape[1] != 3:
                raise InputError(f"runtime: images must be float32 [N, 3, H, W], got "
                                 f"{images.shape}")
            return images
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or list(images.shape[1:]) != [*frame, 3]:
            raise InputError(f"runtime: {self.path.name} is a frame-to-map graph: it takes "
                             f"camera frames uint8 [N, {frame[0]}, {frame[1]}, 3] (RGB), got "
                             f"{images.dtype} {list(images.shape)}")
        return np.ascontiguousarray(images)

    def _outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Each backend's outputs by name; by default its one output from :meth:`_predict`."""
        return {self.output_names[0]: self._predict(images)}

    def _predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def device_call(self) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], Any]] | None:
        """``(upload, forward)`` for timing device compute alone on a GPU: ``upload(images)``
        puts a batch on the device once, ``forward(batch)`` enqueues the model on it and
        returns the output left on the device (no host copies). None where the backend has
        no such split (CPU runtimes, ONNX Runtime)."""
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path.name}, backend={self.backend}, "
                f"precision={self.precision}, device={self.device})")


def agreed_spec(path: Path, manifest_spec: ModelSpec | None,
                embedded: ModelSpec | None) -> ModelSpec | None:
    """The spec to run a file with: the one embedded in it (what it was exported with),
    which a manifest listing it must equal (its ``manifest_sha256`` is a digest anyone
    can recompute after editing it).

    Raises:
        ManifestError: the manifest's spec differs from the file's, naming the field.
    """
    if manifest_spec is None or embedded is None:
        return manifest_spec or embedded
    mine, theirs = manifest_spec.to_dict(), embedded.to_dict()
    diff = [k for k in dict.fromkeys([*theirs, *mine]) if mine.get(k) != theirs.get(k)]
    if diff:
        k = diff[0]
        raise ManifestError(f"runtime: {path}: its manifest.json gives spec {k}="
                            f"{str(mine.get(k))[:80]} but the file's own embedded spec says "
                            f"{str(theirs.get(k))[:80]}: refusing it (re-export, or remove the "
                            "edited manifest)")
    return embedded


def check_shapes(path: Path, spec: ModelSpec, in_shape: list, out_shape: list,
                 out_names: list[str] | None = None) -> None:
    """Refuse a model file whose own graph contradicts its spec: another class count, a
    fixed input size other than the spec's (it would score or time the wrong thing), or,
    for a multi-task spec, graph outputs (``out_names``) that lack one of its outputs."""
    if out_names is not None and len(output_names(spec)) > 1:
        missing = [n for n in output_names(spec) if n not in out_names]
        if missing:
            raise ManifestError(f"runtime: {path} has outputs {list(out_names)} but its spec "
                                f"names {output_names(spec)}: no {missing[0]!r}; refusing it")
    if (spec.output or "logits") == "logits" and len(out_shape) == 4:
        c = out_shape[1]
        if isinstance(c, int) and c != spec.classes:
            raise ManifestError(f"runtime: {path} outputs {c} classes but its spec says "
                                f"{spec.classes}: refusing it")
    if spec.frame_size is not None:  # a frame-to-map graph: uint8 frames of one size
        if len(in_shape) != 4 or list(in_shape[1:]) != [*spec.frame_size, 3]:
            raise ManifestError(f"runtime: {path} takes input {in_shape} but its spec is a "
                                f"frame-to-map graph of {spec.frame_size[0]}x"
                                f"{spec.frame_size[1]} frames [N, H, W, 3]: refusing it")
        return
    if len(in_shape) != 4 or (isinstance(in_shape[1], int) and in_shape[1] != 3):
        raise ManifestError(f"runtime: {path} takes input {in_shape}; expected [N, 3, H, W] "
                            "(NCHW, RGB)")
    hw = in_shape[2:]
    want = list(spec.input_size)
    if all(isinstance(v, int) for v in hw) and hw != want:
        raise ManifestError(f"runtime: {path} has a fixed input size {hw[0]}x{hw[1]} but its "
                            f"spec says {want[0]}x{want[1]}: refusing it")


def built_precision(backend: Backend, path: Path, spec: ModelSpec | None, entry: dict | None,
                    device: str, precision: str | None) -> str:
    """The checks of a runtime whose file carries no spec and runs as built (ExecuTorch,
    LiteRT): listed by a manifest (its spec and entry), the backend available on
    ``device``, no other precision asked for. Returns the entry's precision.

    Raises:
        ManifestError: no manifest lists the file.
        BackendUnavailable: ``backend.available(device)`` says why not.
        InputError: another precision asked for.
    """
    if spec is None or entry is None:
        raise ManifestError(f"runtime: {path}: a {path.suffix} carries no segcompress spec; it "
                            "is loaded beside the manifest.json of the export that wrote it")
    why = backend.available(device)
    if why:
        raise BackendUnavailable(f"runtime: {path.name}: {why}")
    built = entry.get("precision", "f32")
    if precision not in (None, built):
        raise InputError(f"runtime: {path.name} is a {built} model; {backend.title} runs it as "
                         f"built and cannot force {precision}")
    return built


# ---------------------------------------------------------------- description

# load(path, spec from a manifest | None, manifest entry | None, device, threads, precision)
Loader = Callable[[Path, "dict | None", "dict | None", str, "int | None", "str | None"], Runtime]
# convert(onnx_path, dst, *, spec, precision, size) -> the artifact written (dst)
Converter = Callable[..., Path]


def no_companions(path: Path) -> list[Path]:
    """A file that needs no other file beside it."""
    return []


@dataclass(frozen=True)
class Backend:
    """What the registry knows of a backend; each ``deploy/backends/<name>.py`` exports one
    as ``BACKEND``.

    Attributes:
        name: the key in manifests and reports (``onnxruntime``).
        label: how tables name its file format (``ONNX``).
        suffixes: the file suffixes it loads, lower case, with the dot.
        precisions: the canonical precisions its files can run in.
        devices: the device kinds it runs on here (``cpu``, ``cuda``).
        libraries: modules to import ahead of timing, so loading the first model does
            not pay for them.
        available: ``available(device) -> reason | None``: why it cannot run on
            ``device`` here (cheap checks, no model loaded), or None.
        load: builds its :class:`Runtime` (see :data:`Loader`).
        role: ``checkpoint`` (the training checkpoint, what an export starts from),
            ``source`` (the ONNX file every other artifact is converted from),
            ``converted`` (built from the source by :attr:`convert`) or ``compiled``
            (built from the PyTorch model itself: AOTInductor).
        packages: distribution names whose versions a timing report records.
        builds: the precisions an export writes for it, the plain (float) one first.
        convert: ``convert(onnx_path, dst, *, spec, precision, size) -> dst``, building its
            artifact from an ONNX file (the INT8 ONNX for ``int8``); None for the others.
        int8_preset: the NNCF preset its INT8 graphs need (``performance``: symmetric).
        sets_precision: chooses its float precision at load time (the others run their
            files as built).
        tool: the vendor's own benchmark tool for its files (``bench latency
            --cross-check``), or None.
        companions: ``companions(path) -> [Path]``: files beside ``path`` it also needs.
        title: how prose names the runtime (``ONNX Runtime``); default: ``label``.
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    libraries: tuple[str, ...]
    available: Callable[[str], str | None]
    load: Loader
    role: str = "converted"
    packages: tuple[str, ...] = ()
    builds: tuple[str, ...] = ()
    convert: Converter | None = None
    int8_preset: str = "mixed"
    sets_precision: bool = False
    tool: str | None = None
    companions: Callable[[Path], list[Path]] = no_companions
    title: str = ""

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.label)

    def runs_on(self, device: str) -> bool:
        """Whether ``device`` (``cpu``, ``cuda[:N]``...) is of a kind this backend runs on."""
        return ("cuda" if str(device).startswith("cuda") else "cpu") in self.devices

    def default_device(self) -> str:
        """Where its files are timed when no device is asked for: the CPU where it runs
        there, else its first device kind."""
        return "cpu" if "cpu" in self.devices else self.devices[0]

    def artifact_name(self, precision: str, stem: str = "model") -> str:
        """The file an export of ``precision`` is written to: ``model.onnx``,
        ``model_int8.xml``, ``model_fp16.engine`` (the float f32 one unmarked)."""
        mark = "" if precision == PRECISIONS[0] else f"_{precision}"
        return f"{stem}{mark}{self.suffixes[0]}"
