"""Output folders: what a command may write over, and what it may remove.

Every command with ``--out`` (or ``--json``) goes through :func:`open_out` (a folder) or
:func:`open_out_file` (one file): ``--out`` is checked once, before any work (an existing
file, ``.``, a dangling symlink, or a non-empty folder the toolkit did not write is one
``error:`` line and nothing is touched), and the folder's own listing
(:data:`LISTING`, the relative names and sha256 of what the toolkit wrote there) decides
the rest:

* a file of the same name is written over only when the listing holds it and its content
  still matches (a file the user put there or edited is never touched);
* :meth:`OutDir.remove_stale` removes only files an earlier run listed, still unedited.

A rerun into a folder the toolkit wrote itself therefore just works.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from compress.errors import UserError
from compress.io import atomic_write_json, atomic_write_text, sha256_file

LISTING = ".segcompress-files.json"
LISTING_FORMAT = "segcompress-files/1"
PENDING = "pending"  # claimed by a run that had not finished writing it


class OutputError(UserError, ValueError):
    """An output path the toolkit will not write to (the message names the option)."""


def _fingerprint(path: Path) -> str:
    """What a listing records of a file: its sha256, or ``link:<target>`` for a symlink."""
    if path.is_symlink():
        return f"link:{os.readlink(path)}"
    return sha256_file(path)


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return (
        bool(name)
        and not p.is_absolute()
        and ".." not in p.parts
        and "\\" not in name
        and p.parts[:1] != (LISTING,)
    )


def _read_listing(folder: Path) -> dict[str, str] | None:
    """``{relative name: fingerprint}`` of a folder's listing; None without a valid one."""
    try:
        data = json.loads((folder / LISTING).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != LISTING_FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    return {k: v for k, v in files.items() if isinstance(v, str) and _safe_name(k)}


class OutDir:
    """A checked output folder (see the module docstring). Make it with :func:`open_out`.

    Attributes:
        path: the folder.
        option: the option that named it (``--out``, ``--json``), for messages.
    """

    def __init__(self, path: Path, option: str, listed: dict[str, str]) -> None:
        self.path, self.option = path, option
        self._listed = dict(listed)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def ours(self, name: str) -> bool:
        """Whether ``name`` (relative) is a file the toolkit wrote here, unedited since
        (a name claimed by a run that stopped before recording it counts as ours)."""
        p = self.path / name
        fp = self._listed.get(name)
        if fp is None or not (p.is_file() or p.is_symlink()):
            return False
        return fp == PENDING or _fingerprint(p) == fp

    def check(self, names: Iterable[str]) -> None:
        """Refuse, writing nothing, when one of ``names`` (relative paths) exists and is
        not ours (call it before the work; :meth:`claim` checks again when writing).

        Raises:
            OutputError: naming the first such file.
        """
        for name in names:
            if not _safe_name(name):
                raise OutputError(
                    f"{self.option} {self.path}: {name!r} is not a plain relative file name"
                )
            p = self.path / name
            exists = p.exists() or p.is_symlink()
            if exists and (p.is_dir() and not p.is_symlink()):
                raise OutputError(
                    f"{self.option} {self.path}: {p} is a folder where a file "
                    "goes: not replacing it"
                )
            if exists and not self.ours(name):
                why = (
                    "edited since the toolkit wrote it"
                    if name in self._listed
                    else "not written by segcompress"
                )
                raise OutputError(
                    f"{self.option} {self.path}: {p} exists ({why}): not "
                    "writing over it; move it away or give another "
                    f"{self.option}"
                )
            # a parent that is a symlink could lead the write out of the folder
            for parent in PurePosixPath(name).parents:
                q = self.path / parent
                if str(parent) != "." and q.is_symlink():
                    raise OutputError(
                        f"{self.option} {self.path}: {q} is a symlink: not writing through it"
                    )

    def claim(self, names: Iterable[str]) -> None:
        """:meth:`check` ``names``, then list them as being written (a run killed
        half-way leaves them claimed, so its rerun can write over them).

        Raises:
            OutputError: naming the first file that is not ours.
        """
        names = list(names)
        self.check(names)
        new = [n for n in names if n not in self._listed]
        if new:
            self._listed.update((n, PENDING) for n in new)
            self._save()

    def record(self, names: Iterable[str]) -> None:
        """List ``names`` (written now) with their sha256; a name whose file is gone
        is dropped from the listing."""
        for name in names:
            p = self.path / name
            if p.is_file() or p.is_symlink():
                self._listed[name] = _fingerprint(p)
            else:
                self._listed.pop(name, None)
        self._save()

    def files_under(self, under: str) -> list[str]:
        """The relative names of the files now under ``under/`` (a tree a library call
        writes, e.g. an export's artifacts)."""
        root = self.path / under
        if not root.is_dir() or root.is_symlink():
            return []
        return sorted(
            p.relative_to(self.path).as_posix()
            for p in root.rglob("*")
            if p.is_file() or p.is_symlink()
        )

    def listed(self, under: str = "") -> list[str]:
        """The names the listing holds (those starting ``under/`` when given)."""
        prefix = f"{under.rstrip('/')}/" if under else ""
        return sorted(n for n in self._listed if n.startswith(prefix))

    def remove_stale(self, keep: Iterable[str], under: str = "") -> list[str]:
        """Remove the files an earlier run listed (under ``under/``) that are not in
        ``keep`` and are still as it wrote them; an edited one stays (and leaves the
        listing). Returns the names removed."""
        keep, removed = set(keep), []
        for name in self.listed(under):
            if name in keep:
                continue
            if self.ours(name):
                (self.path / name).unlink()
                removed.append(name)
            self._listed.pop(name, None)
        self._save()
        return removed

    def _save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.path / LISTING,
            {
                "format": LISTING_FORMAT,
                "note": "files segcompress wrote here (sha256); it writes over or removes only "
                "these, unedited",
                "files": dict(sorted(self._listed.items())),
            },
        )


def _check_parents(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder (``--out notes.txt/x``
    would otherwise fail half-way with ``NotADirectoryError``)."""
    parent = next((q for q in path.parents if q.exists() or q.is_symlink()), None)
    if parent is not None and not parent.is_dir():
        raise OutputError(f"{option} {path}: {parent} is not a folder")


def _not_dangling(path: Path, option: str, want: str) -> Path:
    """``path``, unless it is a symlink to nothing (refused naming ``option``)."""
    if path.is_symlink() and not path.exists():
        raise OutputError(
            f"{option} {path} is a dangling symlink (to {os.readlink(path)}): give {want}"
        )
    return path


def check_folder_path(path: str | Path, option: str = "--out") -> Path:
    """The checks of an output folder's path alone (also ``compress export``'s, whose
    manifest says what it owns): refused are a dangling symlink, an existing file, the
    current folder or one above it (``--out .``), and a path under a file.

    Raises:
        OutputError: naming ``option`` and the path.
    """
    path = _not_dangling(Path(path), option, "a folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is an existing file: give a folder (new or empty)")
    here = Path.cwd().resolve()
    if path.resolve() in (here, *here.parents):
        raise OutputError(
            f"{option} {path} is the current folder (or above it): give a "
            f"folder of its own, e.g. {option.split()[-1]} results"
        )
    _check_parents(path, option)
    return path


def open_out(path: str | Path, option: str = "--out", *, shared: bool = False) -> OutDir:
    """Check an output folder before any work.

    Accepted: a folder that does not exist yet, an empty folder, or one holding a
    listing of ours (other files in it are left alone). ``shared``: a folder that holds
    more than this command's files (a study dir holds its runs/): any folder is accepted,
    and only the names the command writes are checked (:meth:`OutDir.check`).

    Raises:
        OutputError: ``path`` is ``.`` (or the folder the command runs in), an existing
            file, a dangling symlink, or a non-empty folder without a listing.
    """
    path = check_folder_path(path, option)
    listed = _read_listing(path) if path.is_dir() else None
    if listed is None and not shared and path.is_dir() and any(path.iterdir()):
        raise OutputError(
            f"{option} {path} is not empty and was not written by segcompress "
            f"(no {LISTING}): give a new or empty folder"
        )
    return OutDir(path, option, listed or {})


def new_output(path: str | Path, option: str = "--out") -> Path:
    """Check a path that must not exist yet (``pack``, ``prune``, ``synthetic``): it
    is refused when it exists, is a dangling symlink, or its parent is a file.

    Raises:
        OutputError: naming ``option`` and the path.
    """
    path = _not_dangling(Path(path), option, "a new path")
    if path.exists():
        raise OutputError(f"{option} {path} exists: refusing to overwrite it (give a new path)")
    _check_parents(path, option)
    return path


def open_out_file(
    path: str | Path, option: str = "--json", *, check_existing: bool = True
) -> tuple[OutDir, str]:
    """Check one output file (``--json out.json``) before any work: its folder's listing
    decides whether an existing file of that name may be written over
    (``check_existing=False``: the path's shape only, the owner checked when writing).

    Returns:
        The folder and the file's name in it; call ``claim([name])`` then ``record``.

    Raises:
        OutputError: ``path`` is a folder or a dangling symlink, or exists and was not
            written by the toolkit.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{option} {path} is a dangling symlink: give a file name")
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder: give a file name")
    folder = path.parent
    _check_parents(path, option)
    out = OutDir(folder, option, (_read_listing(folder) if folder.is_dir() else None) or {})
    if check_existing and (path.exists() or path.is_symlink()) and not out.ours(path.name):
        raise OutputError(
            f"{option} {path} exists and was not written by segcompress: not "
            f"writing over it; move it away or give another {option}"
        )
    return out, path.name


def write_json_output(path: str | Path, obj, option: str = "--json") -> Path:
    """Write ``obj`` as JSON to ``path`` through :func:`open_out_file` (checked, listed)."""
    return write_output(path, lambda p: atomic_write_json(p, obj), option)


def write_text_output(path: str | Path, text: str, option: str) -> Path:
    """Write ``text`` to ``path`` through :func:`open_out_file` (checked, listed)."""
    return write_output(path, lambda p: atomic_write_text(p, text), option)


def write_output(path: str | Path, write: Callable[[Path], Path], option: str) -> Path:
    """``write(path)`` through :func:`open_out_file`: checked, claimed and listed, the
    folder's listing read as it is now (so two outputs in one folder both stay listed)."""
    out, name = open_out_file(path, option)
    out.claim([name])
    written = write(out / name)
    out.record([name])
    return written
