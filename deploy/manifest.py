"""``manifest.json``: what an export directory holds, and the checks made before loading.

Layout (see ``docs/CONTRACTS.md``)::

    {"format": "segcompress-export/1", "created": ..., "source_checkpoint": ...,
     "source_sha256": ..., "spec": {...}, "export": {options}, "data": {...},
     "artifacts": [{"file", "sha256", "backend", "precision", "input_name", "input_shape",
                    "input_dtype", "output", "output_name", "normalization", "class_names",
                    "ignore_index", "files": [{"file", "sha256"}], "verification": {...}}],
     "environment": {...}}

``files`` lists companion files an artifact needs (the ``.bin`` of an OpenVINO ``.xml``);
each is hashed too. ``manifest_sha256`` is the sha256 of the manifest's own content (every
other key, canonical JSON): a manifest edited after export is refused by every loader, and
every file it lists must be a plain name inside its directory (no ``..``, no absolute path,
no symlink out) with a sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compress.io import sha256_file
from compress.spec import ModelSpec
from deploy.errors import ManifestError
from deploy.machine import environment

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segcompress-export/1"
REQUIRED_KEYS = ("source_checkpoint", "source_sha256", "spec", "artifacts")
DIGEST_KEY = "manifest_sha256"
ARTIFACT_KEYS = ("file", "sha256", "backend", "precision", "input_shape", "input_dtype", "output")


# the libraries an export builds with beside the backends' own packages (which the
# registry names: ``deploy.runtime.packages()``); the manifest's ``environment`` records both
EXPORT_LIBRARIES = ("segmentation-models-pytorch", "timm", "onnx", "onnxslim", "nncf")


def artifact_entry(path: Path, *, backend: str, precision: str, input_name: str,
                   input_shape: list, output: str, output_name: str, spec: ModelSpec,
                   companions: list[Path] = (), **extra: Any) -> dict[str, Any]:
    """One ``artifacts`` item for ``path`` (hashed now; companions hashed too). A
    frame-to-map graph (``spec.frame_size``) takes uint8 NHWC frames and does the
    normalisation itself (``normalization.in_graph``); its entry carries ``frame_size``."""
    frame = {} if spec.frame_size is None else {"frame_size": list(spec.frame_size)}
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "backend": backend,
        "precision": precision,
        "input_name": input_name,
        "input_shape": list(input_shape),
        "input_dtype": "uint8" if frame else "float32",
        "output": output,
        "output_name": output_name,
        "normalization": {
            "mean": spec.mean, "std": spec.std, "scale": 1 / 255,
            "layout": "NHWC" if frame else "NCHW", "channels": "RGB",
            "formula": "(pixel / 255 - mean) / std",
            **({"in_graph": True} if frame else {}),
        },
        **frame,
        "class_names": list(spec.class_names),
        "ignore_index": spec.ignore_index,
        "files": [{"file": p.name, "sha256": sha256_file(p)} for p in companions],
        **extra,
    }


def new_manifest(checkpoint: Path, source_sha256: str, spec: ModelSpec, options: dict,
                 data: dict, backend_packages: Sequence[str] = ()) -> dict[str, Any]:
    """A manifest with no artifacts yet; its ``environment`` records the versions of
    ``backend_packages`` (the registry's) and :data:`EXPORT_LIBRARIES`."""
    return {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "source_sha256": source_sha256,
        "spec": spec.to_dict(),
        "export": options,
        "data": data,
        "artifacts": [],
        "environment": environment((*backend_packages, *EXPORT_LIBRARIES)),
    }


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 over the manifest's content (all keys but ``manifest_sha256``, canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def member(directory: Path, name: Any, manifest_path: Path) -> Path:
    """``directory / name`` for a file a manifest lists, refused unless it is a plain file
    name that stays inside ``directory`` (no ``..``, no absolute path, no symlink out).

    Raises:
        ManifestError: naming the entry and the manifest.
    """
    ok = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and (
        "\\" not in name) and "\0" not in name and Path(name).name == name
    if ok:
        path = directory / name
        try:
            inside = path.resolve().is_relative_to(directory.resolve())
        except (OSError, RuntimeError):
            inside = False
        if inside:
            return path
    raise ManifestError(f"manifest: {manifest_path} lists {str(name)[:80]!r}, which is not a "
                        f"file inside {directory}: refusing it (entries must be plain file "
                        "names, no '..', absolute paths or symlinks out)")


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``directory/manifest.json`` atomically (with the user's umask), with its own
    digest."""
    from compress.io import atomic_write_json

    manifest[DIGEST_KEY] = manifest_digest(manifest)
    return atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest (a file or the directory holding one).

    Raises:
        ManifestError: missing, not JSON, wrong format, or missing keys (named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"manifest: {path} not found")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest: {path} is broken (not JSON: {e})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest: {path} is broken (not a JSON object)")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"manifest: {path} has format {manifest.get('format')!r}, "
                            f"expected {MANIFEST_FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"manifest: {path} is broken (missing {', '.join(missing)})")
    if not isinstance(manifest["artifacts"], list) or not isinstance(manifest["spec"], dict):
        raise ManifestError(f"manifest: {path} is broken (artifacts must be a list, spec a dict)")
    for i, art in enumerate(manifest["artifacts"]):
        lacking = [k for k in ARTIFACT_KEYS if not isinstance(art, dict) or k not in art]
        if lacking:
            raise ManifestError(f"manifest: {path} artifact #{i} is broken (missing "
                                f"{', '.join(lacking)})")
        companions = art.get("files", [])
        if not isinstance(companions, list) or not all(
                isinstance(c, dict) and "file" in c for c in companions):
            raise ManifestError(f"manifest: {path} artifact #{i} is broken (files must be a "
                                "list of {file, sha256})")
        for entry in (art, *companions):
            member(path.parent, entry["file"], path)
            if not _is_sha256(entry.get("sha256")):
                raise ManifestError(f"manifest: {path} lists {entry['file']} without a valid "
                                    "sha256: refusing to load it unverified")
    digest = manifest.get(DIGEST_KEY)
    if digest is None:
        raise ManifestError(f"manifest: {path} has no {DIGEST_KEY} (written by hand or by an "
                            "older segcompress): re-export with compress export")
    if digest != manifest_digest(manifest):
        raise ManifestError(f"manifest: {path} was changed after export (its content does not "
                            f"match its {DIGEST_KEY}): refusing it")
    ModelSpec.from_dict(manifest["spec"], path)  # its spec is checked before anything uses it
    return manifest


def source_checkpoint(manifest: dict[str, Any]) -> Path | None:
    """The checkpoint an export was made from, when it is still there and unchanged;
    None when it is gone.

    Raises:
        ManifestError: the file there does not match ``source_sha256``.
    """
    src = manifest.get("source_checkpoint")
    if not isinstance(src, str) or not Path(src).is_file():
        return None
    actual = sha256_file(src)
    if actual != manifest.get("source_sha256"):
        raise ManifestError(f"manifest: source checkpoint {src} does not match its "
                            f"source_sha256 (file {actual[:12]}..., manifest "
                            f"{str(manifest.get('source_sha256'))[:12]}...): refusing to load it")
    return Path(src)


def find_artifact(path: str | Path) -> tuple[dict | None, dict | None]:
    """The manifest beside ``path`` and ``path``'s entry in it, after checking hashes.

    Returns:
        ``(manifest, entry)``; ``(None, None)`` when no ``manifest.json`` is beside the
        file; ``(manifest, None)`` when the manifest does not list it.

    Raises:
        ManifestError: the manifest is broken, or the file (or a companion) does not match
            its sha256.
    """
    path = Path(path)
    if not (path.parent / MANIFEST_NAME).is_file():
        return None, None
    manifest = read_manifest(path.parent)
    entry = next((a for a in manifest["artifacts"] if a["file"] == path.name), None)
    if entry is None:
        return manifest, None
    check = [(path.name, entry["sha256"])]
    check += [(f["file"], f["sha256"]) for f in entry.get("files", [])]
    for name, expected in check:
        file = member(path.parent, name, path.parent / MANIFEST_NAME)
        if not file.is_file():
            raise ManifestError(f"manifest: {file} is listed but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ManifestError(f"manifest: {file} does not match its sha256 in "
                                f"{path.parent / MANIFEST_NAME} (file {actual[:12]}..., "
                                f"manifest {str(expected)[:12]}...): refusing to load it")
    return manifest, entry


def artifact_spec(manifest: dict, entry: dict) -> ModelSpec:
    """The model spec for one artifact: the manifest's spec with the artifact's output (and
    frame size, for a frame-to-map graph)."""
    spec = dict(manifest["spec"])
    spec["output"] = entry.get("output", spec.get("output", "logits"))
    if entry.get("frame_size") is not None:  # a frame-to-map graph (compress export --e2e)
        spec["frame_size"] = entry["frame_size"]
    return ModelSpec.from_dict(spec, MANIFEST_NAME)
