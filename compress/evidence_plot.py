"""The picture of a seed comparison (``compress delta --plot``): one row per recipe, its Δ
mIoU against the baseline with the paired bootstrap interval, the seed-paired differences
as dots, a line at 0, and the verdict in the colour of the row.

Input: what :func:`compress.evidence.seed_comparison` returns, one per recipe, with its
name; nothing is recomputed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.io import atomic_write

# the verdicts of compress.evidence.verdict_from_interval and the colour of each
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "within noise": "0.45"}


def delta_rows(comparisons: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """What the plot draws, one dict per recipe in the order given (top row first):
    ``name``, ``delta`` and ``low`` / ``high`` (points), ``seeds`` (the seed-paired Δ, or
    none), ``verdict``, ``colour`` and the ``text`` written beside the row."""
    rows = []
    for name, res in comparisons:
        low, high = res["delta_ci"]
        rows.append({
            "name": name, "delta": res["delta_pts"], "low": low, "high": high,
            "seeds": list(res.get("seed_deltas") or []), "verdict": res["verdict"],
            "colour": VERDICT_COLOURS[res["verdict"]],
            "text": f"{res['delta_pts']:+.2f} [{low:+.2f}, {high:+.2f}] {res['verdict']}",
        })
    return rows


def plot_deltas(comparisons: list[tuple[str, dict[str, Any]]], path: str | Path, *,
                title: str | None = None, baseline_name: str = "baseline") -> Path:
    """A forest plot of ``comparisons`` (``(name, seed_comparison result)`` pairs) written
    to ``path`` (PNG, atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = delta_rows(comparisons)
    if not rows:
        raise ValueError("plot_deltas needs at least one comparison")
    res0 = comparisons[0][1]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.plot([r["low"], r["high"]], [y, y], color=r["colour"], lw=3, solid_capstyle="butt")
        ax.scatter([r["delta"]], [y], color=r["colour"], s=40, zorder=3, marker="D")
        if r["seeds"]:
            ax.scatter(r["seeds"], [y - 0.18] * len(r["seeds"]), color="black", s=10,
                       zorder=3, label="seed-paired Δ" if i == 0 else None)
        ax.annotate(r["text"], (1.01, y), xycoords=("axes fraction", "data"), va="center",
                    fontsize=8, color=r["colour"])
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [r["name"] for r in reversed(rows)], fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.4)
    ax.set_xlabel(f"Δ mIoU vs {baseline_name} (points; {res0['ci_level']:.0%} paired bootstrap over "
                  f"{res0['images']} images)", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    if any(r["seeds"] for r in rows):
        ax.legend(fontsize=7, loc="lower left", frameon=False)
    fig.tight_layout()
    fig.subplots_adjust(right=0.68)
    atomic_write(path, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)
