"""Put packed checkpoints into a zoo folder with their val mIoU, and rewrite its digests.

    python scripts/zoo_install.py ZOO NAME=PACKED:EVAL_JSON ...

Each ``NAME=PACKED:EVAL_JSON`` copies PACKED to ``ZOO/NAME`` (a temp file, read-only, then a
rename: the old file stays whole until then; ``-`` as PACKED keeps the zoo's file) and
sets ``scores.json[NAME]`` to EVAL_JSON's ``miou`` (other entries are kept). Then
``SHA256SUMS`` lists every ``*.pt`` of ZOO, printed as the README's sha256 list. Two installs
into one zoo at once (two study scripts) take turns on ``ZOO/.install.lock``, so neither
loses the other's score or digest.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path

from compress.io import atomic_write_text
from deploy.manifest import sha256_file


def install(zoo: Path, entries: list[str]) -> None:
    zoo.mkdir(parents=True, exist_ok=True)
    with open(zoo / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        _install(zoo, entries)


def _install(zoo: Path, entries: list[str]) -> None:
    listed = zoo / "scores.json"
    scores = json.loads(listed.read_text()) if listed.is_file() else {}
    for entry in entries:
        name, _, rest = entry.partition("=")
        packed, _, eval_json = rest.rpartition(":")
        if not name or not packed or not eval_json:
            sys.exit(f"error: '{entry}' is not NAME=PACKED:EVAL_JSON")
        if packed != "-":
            tmp = zoo / f".{name}.tmp"
            shutil.copyfile(packed, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, zoo / name)
        scores[name] = json.loads(Path(eval_json).read_text())["miou"]
    atomic_write_text(listed, json.dumps(scores, indent=1) + "\n")
    digests = {f.name: sha256_file(f) for f in sorted(zoo.glob("*.pt"))}
    text = "".join(f"{d}  {f}\n" for f, d in digests.items())
    atomic_write_text(zoo / "SHA256SUMS", text)
    print(f"{zoo}: {len(entries)} models in place; the README sha256 list:")
    print(text, end="")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    install(Path(sys.argv[1]), sys.argv[2:])
