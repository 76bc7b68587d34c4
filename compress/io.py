"""Atomic writes and safe loads: nothing half-written ever looks valid."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.errors import UserError


class UnsafeFileError(UserError, ValueError):
    """A file that cannot be loaded safely (corrupt, truncated, or carrying code)."""


class WriteError(UserError, OSError):
    """A result file that could not be written (disk full, a file-size limit, no
    permission); the previous file, if any, is untouched. ``errno`` is the system's."""


FAULT_ENV = "SEGCOMPRESS_FAULT"
FAULT_MARKER_ENV = "SEGCOMPRESS_FAULT_MARKER"


def parse_fault(spec: str | None) -> tuple[str, int, str] | None:
    """``<name>@<n>[:<action>]`` as ``(name, n, action)``; None for no fault."""
    if not spec:
        return None
    target, _, rest = spec.partition("@")
    nth, _, action = rest.partition(":")
    return target, int(nth or 1), action or "pause"


# bound once, at import: a normal run never reads the environment again (a subprocess
# test sets the variable before the process starts; an in-process test calls arm_fault)
_fault = parse_fault(os.environ.get(FAULT_ENV))
_fault_hits: dict[str, int] = {}


def arm_fault(spec: str | None) -> None:
    """Arm (or, with None, disarm) the fault point of ``spec`` in this process, counters
    reset as in a fresh process: what ``SEGCOMPRESS_FAULT`` does at start-up."""
    global _fault
    _fault = parse_fault(spec)
    _fault_hits.clear()


def fault_point(name: str) -> bool:
    """Test hook for the fault-injection suite (``tests/faults``); a no-op in normal use
    (one comparison: the fault is read from the environment at import).

    With ``SEGCOMPRESS_FAULT=<name>@<n>[:<action>]`` the ``n``-th time execution reaches
    point ``name`` (``train_step``, ``eval_batch``, ``loss``, ``write:<file name>``) the
    process writes the file named by ``SEGCOMPRESS_FAULT_MARKER`` (if set) and then, for
    the default action ``pause``, sleeps there until the test kills it; any other action
    (e.g. ``nan``) makes this return True for the caller to act on.
    """
    if _fault is None or _fault[0] != name:
        return False
    _, nth, action = _fault
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] != nth:
        return False
    marker = os.environ.get(FAULT_MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name}@{_fault_hits[name]}\n")
    if action == "pause":
        while True:  # the test sends SIGKILL
            time.sleep(60)
    return True


def current_umask() -> int:
    """The process umask (read by setting and restoring it): files we create with
    ``mkstemp``/``mkdtemp`` (private by default) get the permissions the user asked for."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_SUFFIX = ".tmp"
# the names tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") makes: 8 characters of
# tempfile's alphabet between them
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then fsync and rename onto ``path``.

    A crash or an exception in the writer leaves the previous file untouched and no
    temp file behind (a process killed mid-write can leave a ``.<name>.*.tmp``, which
    nothing loads; :func:`remove_stale_temps` clears them). A failing write (disk full,
    file-size limit) raises ``OSError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            writer(tmp_path)
        except (OSError, RuntimeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, OSError):
                why = e.strerror or detail
            else:  # torch's zip writer reports a failed write(2) as a RuntimeError
                why = f"the write stopped part-way: disk full or a file-size limit? ({detail})"
            raise WriteError(getattr(e, "errno", None) or errno.EIO,
                             f"cannot write {path} ({why}); the previous file, if any, is "
                             "untouched") from e
        if _fault is not None:  # test hook (tests/faults): a kill before the rename
            fault_point(f"write:{path.name}")
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes it 0600: honour the umask
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def is_write_temp(name: str) -> bool:
    """Whether ``name`` is a temp name :func:`atomic_write` makes: ``.<name>.`` + the 8
    characters ``mkstemp`` draws + ``.tmp`` (a user's own ``.notes.tmp`` is not one)."""
    return _TEMP_NAME.fullmatch(name) is not None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.XXXXXXXX.tmp`` files a killed :func:`atomic_write` left in
    ``folder``; other hidden files, ``.tmp`` or not, are left alone."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file() and not p.is_symlink() and is_write_temp(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (manifests, output listings)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch  # here, not at the top: spec and deploy's registry import this module

    return atomic_write(path, lambda p: torch.save(obj, p))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        UnsafeFileError: truncated/corrupt file, or a pickle that carries code (which is
            refused without being run).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "unpickling refused"
        if "Weights only load failed" in str(e) or "Unsupported" in str(e):
            raise UnsafeFileError(
                f"{path}: refused: the file holds Python objects beyond tensors and plain "
                "values (possibly code); it was not executed"
            ) from None
        raise UnsafeFileError(f"{path}: corrupt checkpoint ({msg})") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch raise
        msg = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise UnsafeFileError(f"{path}: corrupt or truncated checkpoint ({msg})") from None


# ---------------------------------------------------------------- bounded YAML

YAML_MAX_BYTES = 1 << 20  # recipes, studies and class maps are a few KiB
# the one nesting limit of every structure read from a file (YAML recipes, studies, class
# maps, overrides; a checkpoint's spec): a recipe nests 4 levels, and 10k nested brackets
# overflow the parser's recursion
NESTING_LIMIT = 64


class YAMLRefused(UserError, ValueError):
    """YAML the toolkit will not parse: aliases (a 500-byte alias bomb expands to
    gigabytes), more than :data:`YAML_MAX_BYTES`, or nested deeper than
    :data:`NESTING_LIMIT`."""


def _no_alias_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise YAMLRefused(f"line {line}: YAML aliases (*{event.anchor}) are not "
                                  "accepted; write the value out")
            if self._depth >= NESTING_LIMIT:
                event = self.peek_event()
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise YAMLRefused(f"line {line}: nested deeper than {NESTING_LIMIT} levels: "
                                  "refused")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return NoAliasLoader


def safe_yaml(text: str | bytes) -> Any:
    """Parse YAML with PyYAML's safe loader, refusing aliases, inputs over
    :data:`YAML_MAX_BYTES` and nesting deeper than :data:`NESTING_LIMIT`, before any
    expansion.

    Raises:
        YAMLRefused: aliases, too large or too deep.
        yaml.YAMLError: malformed YAML, or a tag such as ``!!python/object``.
    """
    import yaml

    if len(text) > YAML_MAX_BYTES:
        raise YAMLRefused(f"{len(text)} bytes, more than the {YAML_MAX_BYTES} accepted")
    return yaml.load(text, Loader=_no_alias_loader())  # a SafeLoader subclass


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; a file in another encoding is one line naming it.

    Raises:
        UnsafeFileError: not UTF-8 (where the first bad byte is).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnsafeFileError(f"{path}: not UTF-8 text (byte {e.start}: "
                              f"{data[e.start:e.start + 1]!r}); save it as UTF-8") from None
