"""Shared pieces of the workflow tests: tiny folder datasets cut from the synthetic scenes,
and one way to run the real console commands."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from compress.data import SyntheticSource

REPO = Path(__file__).resolve().parents[2]


def make_folder_dataset(root: Path, class_names: list[str], splits: dict[str, int],
                        size: tuple[int, int] = (64, 64), remap: dict[int, int] | None = None,
                        seed: int = 0) -> Path:
    """Write ``root/classes.txt``, ``images/<split>/*.png`` and ``masks/<split>/*.png`` from
    the synthetic scenes (classes 0..4), relabelled through ``remap`` (synthetic -> ours)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    for k, (split, n) in enumerate(splits.items()):
        src = SyntheticSource(n, size, seed + 1000 * k)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask, name = src.load(i)
            if remap is not None:
                mask = np.vectorize(lambda v: remap.get(int(v), int(v)))(mask)
            Image.fromarray(img).save(root / "images" / split / f"{name}.png")
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / split / f"{name}.png")
    return root


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run(prog: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> Result:
    """Run ``compress`` or ``bench`` as a user would (a child process, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    module = {"compress": "segcompress.cli", "bench": "bench.cli"}[prog]
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=cwd or REPO, check=False)
    return Result(p.returncode, p.stdout, p.stderr)


def train_teacher(recipe: Path, out: Path, name: str, *overrides: str) -> Path:
    """``compress train -c recipe`` into ``out`` and the ``best.pt`` of run ``name``."""
    r = run("compress", "train", "-c", str(recipe), "-q", f"output_dir={out}", *overrides)
    assert r.code == 0, r.text
    return next((out / name).iterdir()) / "checkpoints" / "best.pt"
