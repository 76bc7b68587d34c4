"""Studies: run several recipes over several seeds (or collect finished runs) and compare.

A study YAML lists recipes, each a run config plus dotted overrides, and names one of
them the baseline::

    name: camvid-study
    baseline: no-kd
    seeds: [0, 1, 2]
    recipes:
      - {name: no-kd, config: configs/camvid/baseline.yaml}
      - {name: response-kd, config: configs/camvid/baseline.yaml,
         overrides: [w_task=0.5, kd.response.weight=0.5, teacher.checkpoint=...]}
      - {name: earlier, runs: [artifacts/runs/camvid-kd/*]}   # finished run dirs

:func:`run_study` trains what is missing (resuming interrupted runs) under
``output_dir/name/runs/<recipe>/seed<k>/`` and writes ``comparison.md``, ``comparison.csv``,
``comparison.json``, ``curves.png`` and ``miou.png`` beside them. A run that stopped with
an error (its ``FAILED`` file) is never compared: it is listed as skipped, with the reason.

The study measures, so it sits beside bench and uses bench's instruments: the one MAC
counter (:func:`compress.macs.count_flops`), the one latency loop
(:func:`bench.latency.measure_latency`) and the one machine description
(:mod:`deploy.machine`, through :func:`bench.latency.describe_machine`).
``compress compare`` is :mod:`bench.cli_study`, mounted by :mod:`segcompress.cli`.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.latency import Pipeline, describe_machine, measure_latency
from bench.launch import Launcher, LauncherConfig, TrainJob
from compress.config import ConfigError, dump_config, flat_keys, load_config
from compress.evidence import LEVEL, RESAMPLES, mean_std, paired_bootstrap
from compress.evidence_plot import plot_deltas
from compress.io import (
    UnsafeFileError,
    YAMLRefused,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_text,
    safe_yaml,
)
from compress.macs import GMACS_DEFINITION, count_flops
from compress.outdir import OutDir, open_out

if TYPE_CHECKING:  # torch is imported where it is used: the CLI starts without it
    import torch

# how each recipe's delta_ci is made (comparison.json's "bootstrap" says so too)
BOOTSTRAP = {"resamples": RESAMPLES, "level": LEVEL, "seed": 0,
             "over": "validation images, the same draw for every seed of both recipes"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeConfig(_Strict):
    """One arm of the study: a run config + overrides trained per seed, or finished runs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    config: str | None = Field(None, description="run config (YAML), relative to the cwd")
    overrides: list[str] = Field(default_factory=list)
    seeds: list[int] | None = Field(None, description="default: the study's seeds")
    runs: list[str] = Field(default_factory=list, description="finished run dirs (globs)")

    @model_validator(mode="after")
    def _one_source(self) -> RecipeConfig:
        if bool(self.config) == bool(self.runs):
            raise ValueError(f"recipe {self.name!r}: give either 'config' or 'runs'")
        return self


class LatencyConfig(_Strict):
    """Batch-1 CPU latency, measured with torch, all models interleaved round by round."""

    enabled: bool = True
    threads: int = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=2)


class StudyConfig(_Strict):
    name: str = Field("study", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    output_dir: str = "artifacts/studies"
    baseline: str
    seeds: list[int] = Field(default_factory=lambda: [0])
    overrides: list[str] = Field(default_factory=list, description="for every recipe")
    recipes: list[RecipeConfig]
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)

    @model_validator(mode="after")
    def _names(self) -> StudyConfig:
        names = [r.name for r in self.recipes]
        if len(set(names)) != len(names):
            raise ValueError(f"recipe names must be unique: {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not a recipe; recipes: {names}")
        return self


def load_study(path: str | Path) -> StudyConfig:
    """Parse a study YAML.

    Raises:
        ConfigError: missing file, bad YAML, unknown key or wrong type (named).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"study file not found: {p}")
    try:
        raw = safe_yaml(read_text(p)) or {}
        return StudyConfig.model_validate(raw)
    except UnsafeFileError as e:
        raise ConfigError(str(e)) from None
    except (yaml.YAMLError, YAMLRefused) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except ValidationError as e:
        msgs = [f"{'.'.join(map(str, x['loc'])) or '<root>'}: {x['msg']}" for x in e.errors()]
        raise ConfigError(f"{p}: " + "; ".join(msgs)) from None


def launcher_config(study: StudyConfig, kind: str | None, args: list[str]) -> LauncherConfig:
    """The study's ``launcher:`` block with the command line's ``--launcher`` and
    ``--launcher-arg KEY=VALUE`` (values read as YAML scalars) on top.

    Raises:
        ConfigError: a malformed argument, an unknown key or a bad value (named).
    """
    data = study.launcher.model_dump()
    if kind is not None:
        data["kind"] = kind
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"--launcher-arg {arg!r}: expected KEY=VALUE, e.g. partition=gpu")
        data[key.strip()] = yaml.safe_load(value) if value else None
    try:
        return LauncherConfig.model_validate(data)
    except ValidationError as e:
        msgs = [f"launcher.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
        raise ConfigError("; ".join(msgs)) from None


# ---------------------------------------------------------------- running


def _check_same_config(run_dir: Path, text: str) -> None:
    old = safe_yaml(read_text(run_dir / "config.yaml"))
    new = safe_yaml(text)

    fo, fn = flat_keys(old), flat_keys(new)
    diff = sorted(k for k in set(fo) | set(fn) if fo.get(k) != fn.get(k))
    if diff:
        shown = ", ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"{run_dir} was trained with another config ({shown}); delete it or "
                          "rename the recipe")


def run_study(study: StudyConfig, overrides: list[str] | None = None, *,
              collect_only: bool = False, show: bool = True, log=print,
              launch: Launcher | None = None) -> Path:
    """Train what is missing (with ``launch``), collect every run, and write the comparison.

    Args:
        study: the parsed study.
        overrides: dotted overrides for every recipe's run config (after the study's and
            the recipe's own), e.g. ``["train.epochs=1"]`` for a smoke test.
        collect_only: train nothing; compare the runs that are finished.
            A run dir holding ``FAILED`` (it stopped with an error) is skipped when
            collected, with ``skipped: <run dir>: <reason>`` in the log and in
            ``comparison.md``; when training, it is trained again (resumed).
        log: where progress lines go.
        launch: trains the missing runs (:mod:`bench.launch`: here one after another, or
            as submitit jobs; ``compress compare`` hands compress's loop to it); None with
            a run to train is an error naming the run (use ``collect_only``).

    Returns:
        The study dir (``output_dir/name``) holding ``comparison.md`` and friends.
    """
    from compress.rundir import failed_reason

    out = Path(study.output_dir) / study.name
    study_out(out)  # before any training
    runs, missing, skipped = [], [], []
    jobs: list[TrainJob] = []
    trained: list[tuple[str, Path, bool]] = []

    def skip(run_dir: Path, reason: str) -> None:
        skipped.append(f"skipped: {run_dir}: {reason}")
        log(skipped[-1])

    for recipe in study.recipes:
        if recipe.runs:
            dirs = sorted({Path(d) for pat in recipe.runs for d in glob.glob(pat)})
            if not dirs:
                raise FileNotFoundError(f"recipe {recipe.name}: no run dir matches {recipe.runs}")
            for d in dirs:
                if (reason := failed_reason(d)) is not None:
                    skip(d, reason)
                elif (d / "summary.json").is_file():
                    runs.append((recipe.name, d, False))
                else:
                    missing.append(f"{recipe.name}: {d} (not finished: no summary.json)")
            continue
        for seed in recipe.seeds or study.seeds:
            ov = [*study.overrides, *recipe.overrides, *(overrides or []), f"seed={seed}",
                  f"name={study.name}-{recipe.name}", f"output_dir={out / 'runs'}"]
            cfg = load_config(recipe.config, ov)
            run_dir = out / "runs" / recipe.name / f"seed{seed}"
            if (run_dir / "config.yaml").is_file():
                _check_same_config(run_dir, dump_config(cfg))
            reason = failed_reason(run_dir)
            if reason is None and (run_dir / "summary.json").is_file():
                runs.append((recipe.name, run_dir, True))
                continue
            if collect_only:
                if reason is not None:
                    skip(run_dir, reason)
                else:
                    missing.append(f"{recipe.name} seed {seed}: {run_dir} (not trained)")
                continue
            if launch is None:
                raise ValueError(f"{recipe.name} seed {seed}: {run_dir} is not trained and "
                                 "no launcher was given (collect_only=True compares finished "
                                 "runs)")
            log(f"[{recipe.name} seed {seed}] training -> {run_dir}"
                + (f" (again: it stopped with {reason})" if reason else ""))
            jobs.append(TrainJob(f"{recipe.name} seed {seed}", cfg, run_dir,
                                 (run_dir / "checkpoints" / "last.pt").is_file()))
            trained.append((recipe.name, run_dir, True))
    if jobs:
        launch(jobs, show)
        runs += trained
    if not runs:
        raise FileNotFoundError(f"study {study.name}: no finished run to compare "
                                f"({'; '.join(missing + skipped)})")
    result = compare_runs(runs, study, missing, skipped, log=log, show=show)
    write_comparison(out, result)
    return out


# ---------------------------------------------------------------- collecting


def _read_metrics_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for r in csv.DictReader(path.open()):
        rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
    return rows


def collect_run(recipe: str, run_dir: Path, trained_here: bool) -> dict:
    """One finished run: scores from ``best.pt``, times from ``summary.json``, curves."""
    from compress.models import read_checkpoint

    summary = json.loads((run_dir / "summary.json").read_text())
    best = run_dir / "checkpoints" / "best.pt"
    ckpt = read_checkpoint(best)
    metrics = ckpt.get("metrics") or {}
    cfg = ckpt.get("config") or {}
    return {
        "recipe": recipe, "run_dir": str(run_dir), "seed": cfg.get("seed"),
        "trained_here": trained_here, "checkpoint": str(best), "spec": ckpt["spec"].to_dict(),
        "miou": float(metrics.get("miou", summary["best_val_miou"])),
        "best_epoch": ckpt.get("epoch"), "epochs": summary["epochs"],
        "final_miou": (summary.get("final") or {}).get("val_miou"),
        "per_class_iou": metrics.get("per_class_iou") or {},
        "train_seconds": summary.get("train_seconds"),
        "history": _read_metrics_csv(run_dir / "metrics.csv"),
        # a multi-task student: best.pt's depth metrics (None for a single-task run)
        **{f"depth_{k}": (metrics.get("depth") or {}).get(k)
           for k in ("rmse", "abs_rel", "delta1")},
    }


def count_params_gmacs(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, float]:
    """Parameters and GMACs at batch 1, by the one counter (:data:`GMACS_DEFINITION`)."""
    res = count_flops(model, size, breakdown=False)
    return res.params["total"], res.gmacs


def time_models(models: dict[str, torch.nn.Module], sizes: dict[str, tuple[int, int]],
                threads: int = 1, warmup: int = 5, repeats: int = 30,
                progress: bool = False) -> dict[str, dict]:
    """Batch-1 CPU forward time per model, in ms: median and std over ``repeats``.

    bench's loop (:func:`bench.latency.measure_latency`) times the models interleaved (one
    call each per round, order rotating), so a change in machine load during the
    measurement hits all of them alike.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            pipelines = []
            for k, m in models.items():
                x = torch.randn(1, 3, *sizes[k])
                pipelines.append(Pipeline(k, lambda _run, x=x: x, m.eval()))
            results = measure_latency(pipelines, runs=repeats, warmup=warmup, progress=progress)
    finally:
        torch.set_num_threads(old)
    return {r.name: {"ms_median": r.model.median, "ms_std": r.model.std, "repeats": r.model.n}
            for r in results}


def hardware(threads: int | None = None) -> dict:
    """What this machine is (:func:`bench.latency.describe_machine`: the one machine
    description, :mod:`deploy.machine`), with its one-line ``summary``."""
    return describe_machine("cpu", threads)


def _spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def compare_runs(runs: list[tuple[str, Path, bool]], study: StudyConfig,
                 missing: list[str] | None = None, skipped: list[str] | None = None,
                 log=print, show: bool = False) -> dict:
    """Everything the comparison files show, as one dict (also ``comparison.json``).

    Each recipe's Δ mIoU against the baseline gets a paired bootstrap interval over the
    validation images (:func:`compress.evidence.paired_bootstrap` of every run's per-image
    counts, :func:`compress.rundir.val_image_counts`; a run without them has its best.pt
    scored now, said through ``log``, and kept when the run is this study's) and the
    verdict that interval gives.

    Raises:
        InputError: two runs were scored on different validation images (named).
    """
    from compress.models import load_model
    from compress.rundir import val_image_counts

    rows = [collect_run(r, d, here) for r, d, here in runs]
    per_image = {r["run_dir"]: val_image_counts(r["run_dir"], write=r["trained_here"], say=log)
                 for r in rows}
    # cost per distinct architecture: params, GMACs, latency (weights do not matter)
    models, sizes, cost = {}, {}, {}
    for row in rows:
        key = _spec_key(row["spec"])
        row["arch_key"] = key
        if key not in models:
            models[key] = load_model(row["checkpoint"])
            sizes[key] = tuple(row["spec"]["input_size"])
            params, gmacs = count_params_gmacs(models[key], sizes[key])
            cost[key] = {"params": params, "gmacs": gmacs}
    lat = study.latency
    if lat.enabled:
        timing = time_models(models, sizes, lat.threads, lat.warmup, lat.repeats, show)
        for k, c in cost.items():
            c.update(timing[k])
    for row in rows:
        row.update(cost[row["arch_key"]])

    base_rows = [r for r in rows if r["recipe"] == study.baseline]
    base_mean = mean_std([r["miou"] for r in base_rows])[0] if base_rows else None
    recipes = []
    for recipe in study.recipes:
        mine = [r for r in rows if r["recipe"] == recipe.name]
        if not mine:
            continue
        mious = [r["miou"] for r in mine]
        mean, std = mean_std(mious)
        classes = list(mine[0]["per_class_iou"])
        per_class = {}
        for c in classes:
            vals = [r["per_class_iou"].get(c) for r in mine if r["per_class_iou"].get(c) is not None]
            per_class[c] = statistics.fmean(vals) if vals else None
        agg = {
            "recipe": recipe.name, "seeds": len(mine), "miou_mean": mean, "miou_std": std,
            "miou_min": min(mious), "miou_max": max(mious), "per_class_iou": per_class,
            "train_seconds_mean": statistics.fmean([r["train_seconds"] or 0 for r in mine]),
            **{k: mine[0].get(k) for k in ("params", "gmacs", "ms_median", "ms_std")},
        }
        for k in DEPTH_KEYS:  # multi-task students: mean (± std) over the seeds
            vals = [r[k] for r in mine if r.get(k) is not None]
            if vals:
                agg[f"{k}_mean"], agg[f"{k}_std"] = mean_std(vals)
        if base_mean is not None:
            d = (mean - base_mean) * 100
            agg["delta_pts"] = d
            agg["delta_pct"] = (mean / base_mean - 1) * 100 if base_mean else None
            if recipe.name == study.baseline:
                agg["verdict"] = "baseline"
            else:  # the same resampled val images for every seed of both recipes
                ci = paired_bootstrap([per_image[r["run_dir"]] for r in base_rows],
                                      [per_image[r["run_dir"]] for r in mine],
                                      resamples=BOOTSTRAP["resamples"],
                                      seed=BOOTSTRAP["seed"], level=BOOTSTRAP["level"])
                agg["delta_ci"], agg["verdict"] = [ci.low, ci.high], ci.verdict
                agg["ci_images"] = ci.images
            # the same seed gives both recipes the same initialisation and data order
            base_by_seed = {r["seed"]: r["miou"] for r in rows if r["recipe"] == study.baseline}
            pairs = [(r["miou"] - base_by_seed[r["seed"]]) * 100 for r in mine
                     if r["seed"] in base_by_seed]
            if pairs and recipe.name != study.baseline:
                agg["paired_delta_pts"], agg["paired_delta_std"] = mean_std(pairs)
                agg["paired_seeds"] = len(pairs)
                agg["paired_deltas"] = pairs
        recipes.append(agg)
    for row in rows:
        if base_mean is not None:
            row["delta_pts"] = (row["miou"] - base_mean) * 100
            row["delta_pct"] = (row["miou"] / base_mean - 1) * 100 if base_mean else None
    return {"study": study.name, "baseline": study.baseline, "hardware": hardware(lat.threads if lat.enabled else None),
            "latency": lat.model_dump(), "bootstrap": BOOTSTRAP, "recipes": recipes, "runs": rows,
            "missing": list(missing or []), "skipped": list(skipped or [])}


# ---------------------------------------------------------------- writing


DEPTH_KEYS = ("depth_rmse", "depth_abs_rel", "depth_delta1")


def _has_depth(res: dict) -> bool:
    return any(r.get("depth_rmse") is not None for r in res["runs"])


def _f(v, fmt: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _pm(mean, std, fmt=".2f") -> str:
    return _f(mean, fmt) + ("" if std is None or mean is None else f" ± {std:{fmt.lstrip('+')}}")


def _ci(interval: list[float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def comparison_markdown(res: dict) -> str:
    hw, lat, boot = res["hardware"], res["latency"], res["bootstrap"]
    ci_pct = f"{boot['level'] * 100:g}"
    lines = [f"# Study {res['study']}", "",
             (f"Baseline: **{res['baseline']}**. mIoU is the best validation epoch of each run "
             "(what `best.pt` holds), in points; Δ is against the baseline's mean over seeds. "
             f"Δ {ci_pct}% CI: paired bootstrap over the validation images "
             f"({boot['resamples']} resamples, the same images drawn for every seed of both "
             "recipes, Δ of the seed means); the verdict is *better* or *worse* only where "
             "that interval excludes 0, else *within noise*. It covers the choice of images, "
             "not of seeds: the seed spread is the ± of the mIoU and Δ paired, the mean ± std "
             "over seeds of (recipe − baseline) with the same seed."), ""]
    lines += [(f"| recipe | seeds | mIoU mean ± std | min–max | Δ pts | Δ {ci_pct}% CI | Δ % "
              "| verdict | Δ paired | params (M) | GMACs | ms/image (median ± std) "
              "| train time (s) |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in res["recipes"]:
        std = None if a["miou_std"] is None else a["miou_std"] * 100
        lines.append(
            f"| {a['recipe']} | {a['seeds']} | {_pm(a['miou_mean'] * 100, std)} | "
            f"{a['miou_min'] * 100:.2f}–{a['miou_max'] * 100:.2f} | "
            f"{_f(a.get('delta_pts'), '+.2f')} | {_ci(a.get('delta_ci'))} | "
            f"{_f(a.get('delta_pct'), '+.1f')} | {a.get('verdict', '-')} | "
            f"{_pm(a.get('paired_delta_pts'), a.get('paired_delta_std'), '+.2f')} | "
            f"{a['params'] / 1e6:.3f} | {_f(a['gmacs'], '.3f')} | "
            f"{_pm(a.get('ms_median'), a.get('ms_std'))} | {a['train_seconds_mean']:.1f} |")
    lines += ["", "## Runs", "",
              "| recipe | seed | mIoU | Δ pts | Δ % | best epoch / epochs | train time (s) | run dir |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        where = r["run_dir"] + ("" if r["trained_here"] else " (collected)")
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['miou'] * 100:.2f} | "
                     f"{_f(r.get('delta_pts'), '+.2f')} | {_f(r.get('delta_pct'), '+.1f')} | "
                     f"{r['best_epoch']} / {r['epochs']} | {_f(r['train_seconds'], '.1f')} | "
                     f"`{where}` |")
    if _has_depth(res):
        lines += ["", "## Depth (multi-task students, best.pt)", "",
                  "| recipe | seeds | depth RMSE (m) mean ± std | AbsRel | δ < 1.25 (%) |",
                  "|---|---|---|---|---|"]
        for a in res["recipes"]:
            d1 = a.get("depth_delta1_mean")
            lines.append(f"| {a['recipe']} | {a['seeds']} | "
                         f"{_pm(a.get('depth_rmse_mean'), a.get('depth_rmse_std'), '.3f')} | "
                         f"{_f(a.get('depth_abs_rel_mean'), '.3f')} | "
                         f"{_f(None if d1 is None else d1 * 100)} |")
    classes = list(res["recipes"][0]["per_class_iou"]) if res["recipes"] else []
    if classes:
        lines += ["", "## Per-class IoU (mean over seeds, points)", "",
                  "| recipe | " + " | ".join(classes) + " |",
                  "|---|" + "---|" * len(classes)]
        for a in res["recipes"]:
            vals = [_f(None if a["per_class_iou"].get(c) is None else a["per_class_iou"][c] * 100,
                       ".1f") for c in classes]
            lines.append(f"| {a['recipe']} | " + " | ".join(vals) + " |")
    lines += ["", "## Setup", "",
              (f"- Hardware (this machine): {hw['summary']}; torch "
               f"{hw['packages'].get('torch')}, Python {hw['python']}."),
              f"- Latency: batch 1, CPU, {lat['threads']} thread(s), float32, torch eager, "
              f"each model at its training input size, {lat['warmup']} warm-up + "
              f"{lat['repeats']} timed calls, models interleaved; 1-min load average at the "
              f"time: {_f((hw.get('load_average') or [None])[0])}." if lat["enabled"]
              else "- Latency: not measured.",
              f"- {GMACS_DEFINITION}.",
              ("- Train time: sum of epoch times from each run's summary.json (validation "
              "excluded); runs marked (collected) may come from other hardware."),
              "", "![training curves](curves.png)", "", "![mIoU per run](miou.png)"]
    if delta_comparisons(res):
        lines += ["", "![Δ mIoU per recipe, paired interval](delta.png)"]
    if res["missing"]:
        lines += ["", "## Missing", ""] + [f"- {m}" for m in res["missing"]]
    if res.get("skipped"):
        lines += ["", "## Skipped (stopped with an error: their FAILED file)", ""]
        lines += [f"- {m}" for m in res["skipped"]]
    return "\n".join(lines) + "\n"


def comparison_csv(res: dict) -> str:
    classes = list(res["recipes"][0]["per_class_iou"]) if res["recipes"] else []
    cols = ["row", "recipe", "seed", "seeds", "miou", "miou_std", "miou_min", "miou_max",
            "delta_pts", "delta_ci_low", "delta_ci_high", "delta_pct", "verdict", "paired_delta_pts", "paired_delta_std", "params", "gmacs", "ms_median", "ms_std",
            "threads", "train_seconds", "epochs", "run_dir"] + [f"iou_{c}" for c in classes]
    depth = _has_depth(res)
    if depth:  # multi-task students: their depth metrics (best.pt)
        cols += list(DEPTH_KEYS)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()

    def pts(v):
        return None if v is None else round(v * 100, 3)

    def r4(v):
        return None if v is None else round(v, 4)

    threads = res["latency"]["threads"] if res["latency"]["enabled"] else None
    for r in res["runs"]:
        w.writerow({"row": "run", "recipe": r["recipe"], "seed": r["seed"], "seeds": 1,
                    "miou": pts(r["miou"]), "delta_pts": r4(r.get("delta_pts")),
                    "delta_pct": r4(r.get("delta_pct")), "params": r["params"],
                    "gmacs": r4(r["gmacs"]), "ms_median": r4(r.get("ms_median")),
                    "ms_std": r4(r.get("ms_std")), "threads": threads,
                    "train_seconds": r["train_seconds"], "epochs": r["epochs"],
                    "run_dir": r["run_dir"],
                    **{f"iou_{c}": pts(r["per_class_iou"].get(c)) for c in classes},
                    **{k: r4(r.get(k)) for k in DEPTH_KEYS if depth}})
    for a in res["recipes"]:
        w.writerow({"row": "recipe", "recipe": a["recipe"], "seed": "mean", "seeds": a["seeds"],
                    "miou": pts(a["miou_mean"]), "miou_std": pts(a["miou_std"]),
                    "miou_min": pts(a["miou_min"]), "miou_max": pts(a["miou_max"]),
                    "delta_pts": r4(a.get("delta_pts")), "delta_pct": r4(a.get("delta_pct")),
                    **({"delta_ci_low": r4(a["delta_ci"][0]), "delta_ci_high": r4(a["delta_ci"][1])}
                       if a.get("delta_ci") else {}),
                    "verdict": a.get("verdict"), "paired_delta_pts": r4(a.get("paired_delta_pts")),
                    "paired_delta_std": r4(a.get("paired_delta_std")), "params": a["params"], "gmacs": r4(a["gmacs"]),
                    "ms_median": r4(a.get("ms_median")), "ms_std": r4(a.get("ms_std")),
                    "threads": threads, "train_seconds": round(a["train_seconds_mean"], 1),
                    **{f"iou_{c}": pts(a["per_class_iou"].get(c)) for c in classes},
                    **{k: r4(a.get(f"{k}_mean")) for k in DEPTH_KEYS if depth}})
    return buf.getvalue()


def plot_curves(res: dict, path: Path) -> Path:
    """Each loss term, val mIoU and lr per epoch; one colour per recipe, one line per seed,
    the baseline in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = []
    for r in res["runs"]:
        for row in r["history"]:
            for k in row:
                if (k.startswith("train_") or k in ("val_miou", "lr")) and k not in keys:
                    keys.append(k)
    keys = sorted(keys, key=lambda k: (k == "lr", k == "val_miou", k != "train_loss", k))
    cols = min(3, max(1, len(keys)))
    nrows = -(-len(keys) // cols) if keys else 1
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    recipes = [a["recipe"] for a in res["recipes"]]
    others = [n for n in recipes if n != res["baseline"]]
    for ax, k in zip(axes.flat, keys):
        for r in res["runs"]:
            scale = 100.0 if k == "val_miou" else 1.0  # points, like the tables
            pts = [(row["epoch"], row[k] * scale) for row in r["history"] if row.get(k) is not None]
            if not pts:
                continue
            base = r["recipe"] == res["baseline"]
            colour = "black" if base else colours[others.index(r["recipe"]) % len(colours)]
            ax.plot(*zip(*pts), color=colour, lw=2 if base else 1.3, alpha=0.8, marker=".",
                    ls="--" if base else "-", label=r["recipe"])
        ax.set_title(k.replace("train_", "train ").replace("val_miou", "val mIoU (points)"),
                     fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        if k == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(5, len(handles)),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)
    return path


def plot_miou(res: dict, path: Path) -> Path:
    """Per recipe: each seed's mIoU as a dot, mean ± std as a bar with error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggs = res["recipes"]
    fig, ax = plt.subplots(figsize=(1.4 * len(aggs) + 2, 3.2))
    for i, a in enumerate(aggs):
        ax.bar(i, a["miou_mean"] * 100, color="0.3" if a["recipe"] == res["baseline"] else "C0",
               alpha=0.6, yerr=None if a["miou_std"] is None else a["miou_std"] * 100, capsize=4)
        ys = [r["miou"] * 100 for r in res["runs"] if r["recipe"] == a["recipe"]]
        ax.scatter([i] * len(ys), ys, color="black", s=12, zorder=3)
    ax.set_xticks(range(len(aggs)), [a["recipe"] for a in aggs], rotation=20, fontsize=8)
    ax.set_ylabel("val mIoU (points)")
    lo = min(r["miou"] for r in res["runs"]) * 100
    ax.set_ylim(max(0.0, lo - 5), None)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)
    return path


COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.json", "curves.png",
                    "miou.png", "delta.png")


def delta_comparisons(res: dict) -> list[tuple[str, dict]]:
    """The recipes with an interval, as :func:`compress.evidence_plot.plot_deltas` takes
    them (the names of :func:`compress.evidence.seed_comparison`'s result)."""
    return [(a["recipe"], {"delta_pts": a["delta_pts"], "delta_ci": a["delta_ci"],
                           "verdict": a["verdict"], "seed_deltas": a.get("paired_deltas"),
                           "ci_level": BOOTSTRAP["level"], "images": a.get("ci_images")})
            for a in res["recipes"] if a.get("delta_ci")]


def study_out(out: Path) -> OutDir:
    """The study dir, checked before any training: it holds the study's own ``runs/``,
    so only the comparison's files are checked (none written over unless ours)."""
    target = open_out(out, "study dir", shared=True)
    target.check(COMPARISON_FILES)
    return target


def write_comparison(out: Path, res: dict) -> dict[str, Path]:
    """``comparison.md/.csv/.json``, ``curves.png``, ``miou.png`` and, where a recipe has
    an interval, ``delta.png`` in ``out``."""
    target = open_out(out, "study dir", shared=True)
    target.claim(COMPARISON_FILES)
    slim = {**res, "runs": [{k: v for k, v in r.items() if k not in ("history", "arch_key")}
                            for r in res["runs"]]}
    paths = {
        "md": atomic_write_text(out / "comparison.md", comparison_markdown(res)),
        "csv": atomic_write_text(out / "comparison.csv", comparison_csv(res)),
        "json": atomic_write_json(out / "comparison.json", slim),
        "curves": plot_curves(res, out / "curves.png"),
        "miou": plot_miou(res, out / "miou.png"),
    }
    deltas = delta_comparisons(res)
    if deltas:  # each recipe's Δ with its interval: the plot of `compress delta --plot`
        paths["delta"] = plot_deltas(deltas, out / "delta.png", baseline_name=res["baseline"],
                                     title=f"{res['study']}: Δ mIoU vs {res['baseline']}")
    elif (out / "delta.png").is_file():  # claimed above: ours, from an earlier collection
        (out / "delta.png").unlink()
    target.record(COMPARISON_FILES)
    return paths


def format_summary(res_dir: Path) -> str:
    """The recipe table of ``comparison.md`` for the terminal."""
    text = (res_dir / "comparison.md").read_text()
    table = re.search(r"\| recipe \| seeds.*?\n\n", text, re.DOTALL)
    return table.group(0).strip() if table else text
