"""``bench latency --cross-check``: the vendor's own tool on the same file, beside our figure.

- OpenVINO IR (CPU): ``benchmark_app`` (ships with the ``openvino`` package), synchronous
  API, one stream (``-hint none``), the same thread count and input shape; its median.
- TensorRT engine (GPU): ``trtexec --loadEngine`` where it is on PATH; its GPU compute
  median (to compare with our device-compute figure).

Only the model is timed by these tools (no resize / normalise / argmax), so they compare
with our ``latency_ms`` (CPU) or ``compute_ms`` (GPU), not with end to end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.runtime import get_backend

_OV_MEDIAN = re.compile(r"Median:\s*([0-9.]+)\s*ms")
_TRT_MEDIAN = re.compile(r"GPU Compute Time:.*?median = ([0-9.]+) ms")


def _which(name: str) -> str | None:
    """On PATH, or beside this Python (a venv's console scripts, not activated)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def _run(cmd: list[str], timeout: float) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{Path(cmd[0]).name} exited {done.returncode}: {tail[0]}")
    return done.stdout


def parse_benchmark_app(text: str) -> float:
    """The median latency (ms) from ``benchmark_app``'s report."""
    m = _OV_MEDIAN.search(text)
    if not m:
        raise ValueError("benchmark_app printed no 'Median: ... ms' line")
    return float(m.group(1))


def parse_trtexec(text: str) -> float:
    """The GPU compute median (ms) from ``trtexec``'s summary."""
    m = _TRT_MEDIAN.search(text)
    if not m:
        raise ValueError("trtexec printed no 'GPU Compute Time: ... median = ... ms' line")
    return float(m.group(1))


def cross_check(row: dict[str, Any], size: tuple[int, int], threads: int, runs: int,
                timeout: float = 300) -> dict[str, Any] | None:
    """The vendor tool's median for one latency row, or None when there is none for its
    backend. ``{"tool", "median_ms", "compare_with", "ours_ms"}`` or ``{"tool", "error"}``."""
    path, batch = Path(row["path"]), row.get("batch", 1)
    backend = get_backend(row["backend"])
    if backend.tool == "benchmark_app":
        tool = _which(backend.tool)
        if tool is None:
            return {"tool": backend.tool,
                    "error": f"not on PATH (it ships with {backend.packages[0]})"}
        shape = f"[{batch},3,{size[0]},{size[1]}]"
        cmd = [tool, "-m", str(path), "-d", "CPU", "-api", "sync", "-hint", "none",
               "-nstreams", "1", "-nthreads", str(threads), "-niter", str(runs), "-shape", shape]
        if row.get("precision") == "f32":
            cmd += ["-infer_precision", "f32"]
        parse, ours = parse_benchmark_app, "latency_ms"
    elif backend.tool == "trtexec":
        tool = _which(backend.tool)
        if tool is None:
            return {"tool": backend.tool, "error": f"not on PATH (it ships with {backend.label})"}
        cmd = [tool, f"--loadEngine={path}", f"--iterations={runs}", "--warmUp=500"]
        parse, ours = parse_trtexec, "compute_ms"
    else:
        return None
    try:
        median = parse(_run(cmd, timeout))
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
        return {"tool": Path(cmd[0]).name, "error": str(e)}
    mine = (row.get(ours) or {}).get("median")
    return {"tool": Path(cmd[0]).name, "median_ms": median, "compare_with": ours,
            "ours_ms": mine}
