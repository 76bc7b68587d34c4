"""The speed regression gate: two pytest-benchmark runs compared check by check, each as a
multiple of a reference workload timed round by round beside it.

pytest-benchmark's own ``--benchmark-compare-fail=median:15%`` compares raw medians, so a
run on a machine busier than the baseline's fails on unchanged code. Dividing by a
reference timed once per run does not fix it: load that comes and goes (a training's
batches) hits the checks timed at one moment and not the reference timed at another
(measured on a 2-core VM beside two trainings: unchanged code read +20% to +645%). So each
check also times itself against the reference workload interleaved, call by call
(``tests/benchmarks/conftest.py::timed``: the median of the per-round ratios, stored as
``extra_info["vs_reference"]``), and a check regresses when that ratio grows by more than
the threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from compress.errors import InputError

KEY = "vs_reference"  # extra_info of each timed check
THRESHOLD = 0.15


@dataclass(frozen=True)
class GateRow:
    """One check in both runs: raw medians (s) and its ratio to the reference."""

    name: str
    old_median: float
    new_median: float
    old_ratio: float
    new_ratio: float

    @property
    def raw_change(self) -> float:
        return self.new_median / self.old_median - 1

    @property
    def change(self) -> float:
        """How much slower against the reference (0.2: 20% slower)."""
        return self.new_ratio / self.old_ratio - 1


def read_run(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{check name: (median seconds, ratio to the reference)}`` of a pytest-benchmark
    JSON file (``--benchmark-json FILE``, or ``--benchmark-autosave``'s
    ``.benchmarks/<machine>/NNNN_*.json``); checks without the ratio are left out.

    Raises:
        InputError: not such a file, or no check in it has the ratio (named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        out = {b["name"]: (float(b["stats"]["median"]), float(b["extra_info"][KEY]))
               for b in data["benchmarks"] if KEY in b.get("extra_info", {})}
    except FileNotFoundError:
        raise InputError(f"{path}: no such benchmark file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a pytest-benchmark JSON file ({e})") from None
    if not out:
        raise InputError(f"{path}: no check holds extra_info {KEY!r}: the gate needs runs of "
                         "tests/benchmarks made with its `timed` fixture")
    return out


def compare_runs(old: str | Path, new: str | Path) -> list[GateRow]:
    """The checks both runs hold, by name."""
    a, b = read_run(old), read_run(new)
    return [GateRow(n, a[n][0], b[n][0], a[n][1], b[n][1]) for n in sorted(a.keys() & b.keys())]


def format_gate(rows: list[GateRow], threshold: float = THRESHOLD) -> str:
    lines = [f"{'check':<42}{'old ms':>9}{'new ms':>9}{'raw':>8}{'vs ref':>8}  verdict"]
    for r in rows:
        verdict = "SLOWER" if r.change > threshold else "ok"
        lines.append(f"{r.name[:41]:<42}{r.old_median * 1e3:>9.3f}{r.new_median * 1e3:>9.3f}"
                     f"{r.raw_change:>+8.0%}{r.change:>+8.0%}  {verdict}")
    return "\n".join(lines)


def slower(rows: list[GateRow], threshold: float = THRESHOLD) -> list[GateRow]:
    return [r for r in rows if r.change > threshold]
