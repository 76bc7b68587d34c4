"""scripts/zoo_install.py: files, scores and digests land together; concurrent installs take turns."""
from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "zoo_install.py"
ROOT = SCRIPT.parents[1]


def _entry(tmp: Path, name: str, miou: float) -> str:
    packed = tmp / f"packed-{name}"
    packed.write_bytes(name.encode() * 10)
    ev = tmp / f"eval-{name}.json"
    ev.write_text(json.dumps({"miou": miou}))
    return f"{name}={packed}:{ev}"


def _install(zoo: Path, *entries: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(zoo), *entries], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_install_writes_file_score_and_digest(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "scores.json").write_text(json.dumps({"old.pt": 0.5}))
    p = _install(zoo, _entry(tmp_path, "a.pt", 0.61))
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert (zoo / "a.pt").read_bytes() == b"a.pt" * 10
    assert json.loads((zoo / "scores.json").read_text()) == {"old.pt": 0.5, "a.pt": 0.61}
    digest = hashlib.sha256(b"a.pt" * 10).hexdigest()
    assert (zoo / "SHA256SUMS").read_text() == f"{digest}  a.pt\n"
    assert not list(zoo.glob(".*.tmp"))


def test_install_waits_for_the_zoo_lock(tmp_path):
    """While another install holds ZOO/.install.lock, nothing is written; after it, both entries stay."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    first = _install(zoo, _entry(tmp_path, "a.pt", 0.61))
    assert first.wait(timeout=60) == 0
    with open(zoo / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        second = _install(zoo, _entry(tmp_path, "b.pt", 0.62))
        time.sleep(1.5)
        assert second.poll() is None, "installed while the lock was held"
        assert not (zoo / "b.pt").exists()
    assert second.wait(timeout=60) == 0
    assert json.loads((zoo / "scores.json").read_text()) == {"a.pt": 0.61, "b.pt": 0.62}
    assert [line.split()[1] for line in (zoo / "SHA256SUMS").read_text().splitlines()] == ["a.pt", "b.pt"]
