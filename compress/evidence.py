"""Evidence for a difference in mIoU: per-image counts and the paired bootstrap.

A split's mIoU comes from pixel counts summed over its images, so the counts of each
image (intersection and union per class, :func:`compress.metrics.image_counts`) are all
it takes to score any resample of the images. :func:`paired_bootstrap` draws the images
with replacement, applies the same draw to every run of both sides, and reads a
percentile interval off the resampled differences; :func:`verdict_from_interval` calls a
difference "better" or "worse" only where that interval excludes 0.

Files: ``per_image.npz`` (:meth:`ImageCounts.save`), beside the eval it belongs to: a
training run's ``val/`` (its ``best.pt`` on the val split) and ``test/``, and the output
folder of ``compress eval``. Read with ``allow_pickle=False``: arrays of numbers and
strings only.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import InputError
from compress.io import UnsafeFileError, atomic_write
from compress.metrics import image_counts, mean_iou

RESAMPLES = 2000
MIN_RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True, eq=False)  # arrays: compare the fields, not the objects
class ImageCounts:
    """Per-image pixel counts of one model on one split.

    Attributes:
        images: the images' names (their identity, for pairing), in scoring order.
        intersection, union: int64 ``[N, C]``: per image and class, pixels where truth and
            prediction are both the class / either is (ignored pixels left out).
        class_names: the ``C`` classes.
        source: what was scored (a run dir or checkpoint), for messages.
        meta: what the file records beside (e.g. ``epoch`` of the checkpoint scored).
    """

    images: tuple[str, ...]
    intersection: np.ndarray
    union: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def miou(self) -> float:
        """The split's mIoU (counts summed over every image)."""
        return float(mean_iou(self.intersection.sum(0), self.union.sum(0)))

    def aligned_to(self, images: Sequence[str], other: str = "") -> ImageCounts:
        """The same counts in the order of ``images``.

        Raises:
            InputError: ``images`` is not the same set of images (names both sides).
        """
        images = tuple(images)
        if images == self.images:
            return self
        pos = {n: i for i, n in enumerate(self.images)}
        if len(pos) != len(self.images) or set(images) != set(pos) or len(images) != len(pos):
            only_other = sorted(set(images) - set(pos))
            only_self = sorted(set(pos) - set(images))
            raise InputError(
                f"{other or 'one side'} and {self.source or 'the other'} were not scored on "
                f"the same images ({len(images)} vs {len(self.images)}; only in the first: "
                f"{_few(only_other)}; only in the second: {_few(only_self)}): a paired "
                "comparison needs the same split")
        idx = [pos[n] for n in images]
        return ImageCounts(images, self.intersection[idx], self.union[idx], self.class_names,
                           self.source, self.meta)

    def save(self, path: str | Path) -> Path:
        """Write ``per_image.npz`` atomically (numbers and strings, no pickles)."""
        def write(p: Path) -> None:
            with open(p, "wb") as f:  # a file object: numpy would add ".npz" to the name
                np.savez_compressed(
                    f, images=np.asarray(self.images, dtype=str),
                    class_names=np.asarray(self.class_names, dtype=str),
                    intersection=self.intersection.astype(np.int64),
                    union=self.union.astype(np.int64), meta=np.asarray(json.dumps(self.meta)))

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path, source: str | None = None) -> ImageCounts:
        """Read a :meth:`save` file.

        Raises:
            FileNotFoundError: no such file.
            UnsafeFileError: not such a file (truncated, pickled objects, wrong shapes).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"per-image scores not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                images, names = tuple(z["images"].tolist()), tuple(z["class_names"].tolist())
                inter, union = z["intersection"], z["union"]
                meta = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise UnsafeFileError(f"{path}: not a per-image scores file ({e})") from None
        want = (len(images), len(names))
        if inter.shape != want or union.shape != want or inter.dtype.kind != "i":
            raise UnsafeFileError(f"{path}: counts of shape {inter.shape}/{union.shape}, "
                                  f"expected {want} integers")
        return cls(images, inter.astype(np.int64), union.astype(np.int64), names,
                   str(path) if source is None else source, meta)


def _few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" (+{len(names) - k})" if len(names) > k else "") or "-"


class ImageCounter:
    """Collects :class:`ImageCounts` batch by batch, from the predictions a scoring loop
    already made (the ``per_image`` sink of ``compress.evaluate.evaluate`` and
    ``compress.metrics.score_predictor``; they pass the classes they score)."""

    def __init__(self, source: str = "") -> None:
        self.source = source
        self.class_names: tuple[str, ...] | None = None
        self.images: list[str] = []
        self._inter: list[np.ndarray] = []
        self._union: list[np.ndarray] = []

    def add(self, pred, target, ignore_index: int, images: Sequence[str],
            class_names: Sequence[str]) -> None:
        """One batch: class ids ``pred`` / ``target`` ``[N, H, W]``, the N image names and
        the classes scored."""
        if len(images) != target.shape[0]:
            raise ValueError(f"{len(images)} names for a batch of {target.shape[0]} images")
        if self.class_names is None:
            self.class_names = tuple(class_names)
        elif self.class_names != tuple(class_names):
            raise ValueError(f"classes changed from {self.class_names} to {tuple(class_names)}")
        inter, union = image_counts(pred, target, ignore_index, len(self.class_names))
        self.images += [str(n) for n in images]
        self._inter.append(inter.numpy())
        self._union.append(union.numpy())

    def counts(self, **meta: Any) -> ImageCounts:
        """What was added, with ``meta`` (e.g. the checkpoint's epoch) to record."""
        if not self._inter:
            raise ValueError(f"{self.source or 'per-image counts'}: no images were scored")
        return ImageCounts(tuple(self.images), np.concatenate(self._inter),
                           np.concatenate(self._union), self.class_names, self.source,
                           dict(meta))


@dataclass(frozen=True)
class PairedDelta:
    """Δ mIoU (points, ``other - base``) with its paired bootstrap interval."""

    delta_pts: float
    low: float
    high: float
    resamples: int
    level: float
    images: int
    seed: int

    @property
    def verdict(self) -> str:
        return verdict_from_interval(self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {"delta_pts": self.delta_pts, "delta_ci": [self.low, self.high],
                "verdict": self.verdict, "ci_level": self.level, "resamples": self.resamples,
                "images": self.images, "bootstrap_seed": self.seed}


def verdict_from_interval(low: float, high: float) -> str:
    """``better`` / ``worse`` where the interval of a difference excludes 0, else
    ``within noise``."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "within noise"


def paired_bootstrap(base: Sequence[ImageCounts], other: Sequence[ImageCounts], *,
                     resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                     chunk: int = 256) -> PairedDelta:
    """Δ mIoU of ``other`` against ``base`` with a paired percentile bootstrap interval.

    Each resample draws the images with replacement once and scores every run of both
    sides on that draw (mIoU from the summed counts); the difference is the mean over
    ``other``'s runs (seeds) minus the mean over ``base``'s. The interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of those differences; the
    point estimate is the difference on the images as they are.

    Args:
        base, other: one :class:`ImageCounts` per run (seed), all on the same images
            (paired by name; the order may differ).
        resamples: at least 1000. seed: the draws' seed (reruns agree).

    Returns:
        A :class:`PairedDelta` in mIoU points.

    Raises:
        InputError: runs scored on different images or classes (named).
        ValueError: no runs, fewer than 1000 resamples, a level outside (0, 1).
    """
    if not base or not other:
        raise ValueError("paired_bootstrap needs at least one run on each side")
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"resamples={resamples}: use at least {MIN_RESAMPLES}")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: expected a fraction in (0, 1)")
    ref = base[0]
    runs = []
    for c in [*base, *other]:
        if c.class_names != ref.class_names:
            raise InputError(f"{ref.source} and {c.source} were scored on different classes "
                             f"({_few(list(ref.class_names), 6)} vs "
                             f"{_few(list(c.class_names), 6)})")
        runs.append(c.aligned_to(ref.images, ref.source))
    n = len(ref.images)
    if n == 0:
        raise InputError(f"{ref.source}: no images scored")
    # the mean over other's runs minus the mean over base's
    coef = np.array([-1 / len(base)] * len(base) + [1 / len(other)] * len(other))

    def delta(w: np.ndarray) -> np.ndarray:  # w: [R, N] multiplicity of each image
        miou = np.stack([mean_iou(w @ r.intersection, w @ r.union) for r in runs], -1)
        return miou @ coef * 100.0

    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
        w = np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
        draws.append(delta(w))
    deltas = np.concatenate(draws)
    low, high = np.percentile(deltas, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    point = float(delta(np.ones((1, n)))[0])
    return PairedDelta(point, float(low), float(high), resamples, level, n, seed)


COUNTS_FILE = "per_image.npz"  # what `compress eval` writes beside eval.json


def read_counts(path: str | Path) -> ImageCounts:
    """The per-image counts in ``path``: a ``per_image.npz``, or the folder ``compress
    eval --out`` wrote (holding one).

    Raises:
        FileNotFoundError: neither (named). UnsafeFileError: not such a file.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / COUNTS_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {COUNTS_FILE} in it (a `compress eval --out` "
                                    "folder holds one)")
        path = path / COUNTS_FILE
    return ImageCounts.load(path)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value) of seed results."""
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else None


def parse_recipe_group(text: str) -> tuple[str, list[Path]]:
    """``NAME=RUN[,RUN...]`` (``compress delta --recipe``) -> the name and its runs.

    Raises:
        InputError: no ``=``, an empty name or no runs (the text quoted).
    """
    name, sep, runs = text.partition("=")
    paths = [Path(p) for p in runs.split(",") if p.strip()]
    if not sep or not name.strip() or not paths:
        raise InputError(f"--recipe {text!r}: expected NAME=RUN[,RUN...] (a name, then the "
                         "recipe's scored runs separated by commas)")
    return name.strip(), paths


def seed_comparison(base: Sequence[str | Path], other: Sequence[str | Path], *,
                    resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
                    ) -> dict[str, Any]:
    """Δ mIoU of a recipe's runs (``other``, one scored file per seed) against a
    baseline's (``base``), all scored on the same images: each run's mIoU, each side's
    mean ± std over seeds, Δ of the seed means with its paired bootstrap interval over the
    images and the verdict (:func:`paired_bootstrap`), and, when both sides give the
    same number of runs, the seed-paired differences (``other[i] - base[i]``) with their
    mean ± std: the spread over training runs that the image interval does not show.
    """
    base_counts = [read_counts(p) for p in base]
    other_counts = [read_counts(p) for p in other]
    delta = paired_bootstrap(base_counts, other_counts, resamples=resamples, level=level,
                             seed=seed)
    sides = {}
    for name, counts in (("baseline", base_counts), ("recipe", other_counts)):
        mious = [c.miou() * 100 for c in counts]
        mean, std = mean_std(mious)
        sides[name] = {"runs": [{"source": c.source, "miou": m} for c, m in zip(counts, mious)],
                       "miou_mean": mean, "miou_std": std}
    out: dict[str, Any] = {**sides, **delta.to_dict()}
    if len(base_counts) == len(other_counts):
        paired = [o["miou"] - b["miou"] for b, o in
                  zip(sides["baseline"]["runs"], sides["recipe"]["runs"])]
        mean, std = mean_std(paired)
        out["seed_deltas"] = paired
        out["seed_delta_mean"], out["seed_delta_std"] = mean, std
    return out


def _joined(values: Sequence[float], spec: str) -> str:
    """``a / b / c``: one figure per run (or seed pair)."""
    return " / ".join(format(v, spec) for v in values)


def _pm(mean: float, std: float | None, spec: str) -> str:
    """``mean ± std`` (the std left out for a single run)."""
    return format(mean, spec) + (f" ± {std:.2f}" if std is not None else "")


def seed_comparison_markdown(results: Sequence[tuple[str, dict[str, Any]]],
                             baseline_name: str = "baseline") -> str:
    """A Markdown table of named :func:`seed_comparison` results against one baseline
    (``compress delta --md``): the baseline's row, then per recipe its runs' mIoU, mean ±
    std, Δ of the seed means [interval], the seed-paired Δ (mean ± std) and the verdict."""
    def runs(side: dict[str, Any]) -> str:
        return (f"{_joined([r['miou'] for r in side['runs']], '.2f')} | "
                f"{_pm(side['miou_mean'], side['miou_std'], '.2f')}")

    res0 = results[0][1]
    lines = [(f"| recipe | mIoU per run | mean ± std | Δ − {baseline_name} (seed means) "
              f"[{res0['ci_level']:.0%} paired CI] | seed-paired Δ | verdict |"),
             "|---|---|---|---|---|---|",
             f"| {baseline_name} | {runs(res0['baseline'])} | | | |"]
    for name, res in results:
        low, high = res["delta_ci"]
        paired = ""
        if "seed_deltas" in res:
            paired = (f"{_joined(res['seed_deltas'], '+.2f')} "
                      f"({_pm(res['seed_delta_mean'], res['seed_delta_std'], '+.2f')})")
        lines.append(f"| {name} | {runs(res['recipe'])} | "
                     f"{res['delta_pts']:+.2f} [{low:+.2f}, {high:+.2f}] | {paired} | "
                     f"{res['verdict']} |")
    return "\n".join(lines) + "\n"


def format_seed_comparison(res: dict[str, Any]) -> str:
    """The lines ``compress delta`` prints."""
    def side(name: str) -> str:
        s = res[name]
        return (f"{name:<8} {len(s['runs'])} run(s): "
                f"{_joined([r['miou'] for r in s['runs']], '.2f')} "
                f"(mean {_pm(s['miou_mean'], s['miou_std'], '.2f')})")

    low, high = res["delta_ci"]
    lines = [side("baseline"), side("recipe"),
             (f"Δ mIoU (recipe − baseline, seed means) {res['delta_pts']:+.2f} "
              f"[{low:+.2f}, {high:+.2f}] ({res['ci_level']:.0%} paired bootstrap over "
              f"{res['images']} images, {res['resamples']} resamples): {res['verdict']}")]
    if "seed_deltas" in res:
        std = res["seed_delta_std"]
        lines.append("seed-paired Δ: " + _joined(res["seed_deltas"], "+.2f")
                     + (f" (mean {_pm(res['seed_delta_mean'], std, '+.2f')} over seeds)"
                        if std is not None else ""))
    return "\n".join(lines)
