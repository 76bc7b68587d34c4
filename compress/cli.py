"""compress's own commands: train | distill | eval | pack | prune | config | pseudo-label
(``compress compare`` is bench's, mounted beside these by :mod:`segcompress.cli`).

Each command parses its arguments, loads the config, calls the library and prints a
summary. Errors a user can fix print one line (no traceback unless ``--debug``).

``commands`` holds the commands; ``app`` is them with the global options, runnable as
``python -m compress.cli``. The ``compress`` console command is :mod:`segcompress.cli`,
which mounts these beside deploy's ``export`` (compress never imports deploy): there
``compress eval`` also scores exported artifacts, through the predictor loader it puts in
the click context (``ctx.obj["load_predictor"]``).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from compress.cli_pseudo import register as register_pseudo
from compress.errors import run_cli
from compress.options import DataKind

HELP = "Distil compact segmentation students and deploy them."
commands = typer.Typer()

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML recipe (see configs/)")]
Overrides = Annotated[list[str] | None, typer.Argument(
    help="dotted overrides after the config, e.g. kd.response.temperature=6 train.epochs=5")]
FitConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML recipe (see configs/); with --resume, default: the run's own "
    "config.yaml")]
ResumeOpt = Annotated[Path | None, typer.Option(
    help="run dir (or its checkpoints/last.pt) to continue, with the run's own config.yaml "
    "plus any overrides given now")]
ResumeChangedOpt = Annotated[bool, typer.Option(
    "--resume-changed", help="let --resume continue with a changed model / loss / data / "
    "optimiser recipe (each change is logged and recorded in config.yaml)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def options(
    debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
    trust_factory: Annotated[list[str] | None, typer.Option(
        "--trust-factory", help="package.module:function: run this custom model factory when "
        "a checkpoint or manifest names it (never run otherwise); repeatable")] = None,
) -> None:
    """The global options of the ``compress`` command (``--debug`` is read by
    :func:`compress.errors.run_cli`)."""
    if trust_factory:
        from compress.models import trust_factories

        trust_factories(trust_factory)


def _run_fit(config: Path | None, overrides: list[str] | None, resume: Path | None,
             quiet: bool, distill: bool, resume_changed: bool = False) -> None:
    from compress.config import load_config
    from compress.rundir import check_run_recipe, find_resume
    from compress.train import fit, prepare_teacher

    if config is None and resume is None:
        raise typer.BadParameter("give a recipe (--config) or a run to continue (--resume)",
                                 param_hint="'--config'")
    run_recipe = config is None  # the run dir's own config.yaml: data, not the user's recipe
    if run_recipe:
        config = find_resume(resume)[0] / "config.yaml"
    cfg = load_config(config, overrides)
    if run_recipe:
        check_run_recipe(config.parent, cfg, overrides)
    has_kd = cfg.kd.enabled
    if distill and not has_kd:
        terms = ", ".join(f"kd.{name}.weight" for name in type(cfg.kd).model_fields
                          if hasattr(getattr(cfg.kd, name), "weight"))
        raise typer.BadParameter(f"{config}: no KD weight is set: use `compress train` or set "
                                 f"one of {terms}")
    if not distill and has_kd:
        raise typer.BadParameter(f"{config}: sets KD weights: use `compress distill`")
    if distill:
        prepare_teacher(cfg, show_progress=not quiet)
    result = fit(cfg, resume=resume, show_progress=not quiet, resume_changed=resume_changed)
    typer.echo(f"best val mIoU {result.best_miou * 100:.2f} after {result.epochs} "
               f"epochs ({result.train_seconds:.0f}s training)")
    typer.echo(f"run dir: {result.run_dir}")


@commands.command()
def train(config: FitConfigOpt = None, overrides: Overrides = None, resume: ResumeOpt = None,
          resume_changed: ResumeChangedOpt = False, quiet: QuietOpt = False) -> None:
    """Train a model without a teacher (a teacher, or a no-KD student baseline)."""
    _run_fit(config, overrides, resume, quiet, distill=False, resume_changed=resume_changed)


@commands.command()
def distill(config: FitConfigOpt = None, overrides: Overrides = None, resume: ResumeOpt = None,
            resume_changed: ResumeChangedOpt = False, quiet: QuietOpt = False) -> None:
    """Train a student under a frozen teacher (response / feature / CWD KD terms)."""
    _run_fit(config, overrides, resume, quiet, distill=True, resume_changed=resume_changed)


class EvalDepth(str, Enum):
    auto = "auto"
    none = "none"
    dense = "dense"
    lidar = "lidar"
    files = "files"


@commands.command("eval")
def eval_(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(
        help="checkpoint (.pt), exported artifact, or a transformers model folder")],
    data: Annotated[Path, typer.Option(help="dataset root (CamVid layout or images/masks folder)")],
    split: Annotated[str, typer.Option(help="split to score")] = "val",
    data_kind: Annotated[DataKind, typer.Option(
        "--data-kind", "--kind", help="layout of --data (--kind: the old name)")]
    = DataKind.camvid,
    size: Annotated[str | None, typer.Option(help="HxW; default: the model's input size")] = None,
    flip: Annotated[bool, typer.Option(help="flip test-time augmentation")] = False,
    out: Annotated[Path | None, typer.Option(help="where eval.json goes")] = None,
    arch: Annotated[str | None, typer.Option(help="architecture of a plain state_dict")] = None,
    encoder: Annotated[str | None, typer.Option(help="encoder of a plain state_dict")] = None,
    classes: Annotated[int | None, typer.Option(help="classes of a plain state_dict")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    score_at: Annotated[str, typer.Option(
        help="network: score at the input size; source: resize logits back to each "
             "image's own size (CamVid 360x480)")] = "network",
    depth: Annotated[EvalDepth, typer.Option(
        help="a multi-task model's depth targets: auto (a folder's depth/, synthetic "
             "dense), none, dense, lidar (synthetic) or files")] = EvalDepth.auto,
    compare: Annotated[Path | None, typer.Option(
        help="a second checkpoint (or artifact) scored on the same images (into OUT/reference): "
             "Δ mIoU (CHECKPOINT − it) with its paired bootstrap 95% interval and verdict")]
    = None,
) -> None:
    """Score a checkpoint (exported artifact, transformers model folder) on a split:
    eval.json + confusion matrix + per-image counts (+ depth metrics for a multi-task model
    when the split has depth; + the paired comparison with --compare)."""
    from compress.evaluate import (
        checkpoint_predictor,
        evaluate_checkpoint,
        format_table,
        parse_size,
    )

    result = evaluate_checkpoint(checkpoint, data, split, kind=data_kind.value, size=parse_size(size),
                                 flip=flip, out=out, arch=arch, encoder=encoder, classes=classes,
                                 device=device, score_at=score_at, depth=depth.value,
                                 reference=compare,
                                 load=(ctx.obj or {}).get("load_predictor", checkpoint_predictor))
    typer.echo(format_table(result))
    typer.echo(f"eval: {result['eval_json']}")


class DepthMode(str, Enum):
    none = "none"
    dense = "dense"
    lidar = "lidar"


@commands.command("delta")
def delta(
    recipe: Annotated[list[Path] | None, typer.Argument(
        help="the recipe's scored runs, one per seed: `compress eval --out` folders (or "
             "their per_image.npz)", show_default=False)] = None,
    baseline: Annotated[list[Path], typer.Option(
        help="a baseline run scored on the same images (repeat: one per seed)",
        show_default=False)] = ...,
    recipes: Annotated[list[str] | None, typer.Option(
        "--recipe", help="NAME=RUN[,RUN...]: a named recipe's scored runs, one per seed "
                         "(repeat for several recipes against the same baseline; instead of "
                         "the positional runs)", show_default=False)] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the result here")]
    = None,
    plot: Annotated[Path | None, typer.Option(
        help="also draw it here (PNG): each recipe's Δ with its interval and seed-paired Δ")]
    = None,
    md: Annotated[Path | None, typer.Option(
        "--md", help="also write a Markdown table here: the baseline, then each recipe")]
    = None,
    baseline_name: Annotated[str, typer.Option(
        help="how the table and the plot name the baseline")] = "baseline",
    title: Annotated[str | None, typer.Option(help="the plot's title")] = None,
) -> None:
    """Δ mIoU of a recipe's seeds against a baseline's, from `compress eval` results: each
    run's mIoU, the seed means, Δ with its paired bootstrap 95% interval over the images
    and the verdict, and the seed-paired differences; several named recipes with --recipe."""
    from compress.evidence import (
        format_seed_comparison,
        parse_recipe_group,
        seed_comparison,
        seed_comparison_markdown,
    )
    from compress.outdir import (
        open_out_file,
        write_json_output,
        write_output,
        write_text_output,
    )

    if bool(recipe) == bool(recipes):
        raise typer.BadParameter("give the recipe's runs as arguments, or named recipes with "
                                 "--recipe NAME=RUN,RUN (not both)", param_hint="RECIPE")
    groups = [parse_recipe_group(text) for text in recipes] if recipes else [("recipe", recipe)]
    if json_path:
        open_out_file(json_path)  # before any work
    for path, option in ((plot, "--plot"), (md, "--md")):
        if path:
            open_out_file(path, option)  # before any work
    results = [(name, seed_comparison(baseline, runs)) for name, runs in groups]
    for name, result in results:
        if recipes:
            typer.echo(f"== {name}")
        typer.echo(format_seed_comparison(result))
    if json_path:
        write_json_output(json_path, results[0][1] if not recipes else
                          {"comparisons": [{"name": n, **r} for n, r in results]})
        typer.echo(f"json: {json_path}")
    if md:
        write_text_output(md, seed_comparison_markdown(results, baseline_name), "--md")
        typer.echo(f"table: {md}")
    if plot:
        from compress.evidence_plot import plot_deltas

        write_output(plot, lambda p: plot_deltas(results, p, title=title,
                                                  baseline_name=baseline_name), "--plot")
        typer.echo(f"plot: {plot}")


@commands.command("synthetic")
def synthetic(
    out: Annotated[Path, typer.Option(help="new dataset folder (must not exist)")],
    length: Annotated[int, typer.Option(help="scenes per split")] = 48,
    size: Annotated[str, typer.Option(help="HxW of the scenes")] = "128x128",
    seed: Annotated[int, typer.Option(help="scene seed (val uses seed + 1000)")] = 0,
    depth: Annotated[DepthMode, typer.Option(
        help="depth maps to write: dense, lidar (sparse scan lines) or none")] = DepthMode.none,
    masks: Annotated[bool, typer.Option(
        "--masks/--no-masks", help="--no-masks: a depth-only dataset")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Write synthetic scenes as a folder dataset (images, masks, depth): offline data."""
    from compress.data.materialize import write_synthetic
    from compress.evaluate import parse_size

    r = write_synthetic(out, length=length, size=parse_size(size), seed=seed,
                        depth=depth.value, masks=masks, show=not quiet)
    parts = ["images"] + (["masks"] if masks else []) + ([f"{depth.value} depth"]
                                                         if depth.value != "none" else [])
    typer.echo(f"wrote {length} scenes per split ({', '.join(r['splits'])}) to {out}: "
               f"{', '.join(parts)}")


@commands.command("pack")
def pack(
    checkpoint: Annotated[Path, typer.Argument(help="a segcompress checkpoint (best.pt)")],
    out: Annotated[Path, typer.Option(help="where the packed checkpoint goes (must not exist)")],
    half: Annotated[bool, typer.Option(help="store floating-point weights as float16")] = True,
) -> None:
    """A shippable checkpoint: spec + weights (float16) + metrics, no optimizer state."""
    from compress.models import pack_checkpoint

    info = pack_checkpoint(checkpoint, out, half=half)
    typer.echo(f"packed {checkpoint} -> {info['path']} ({info['bytes'] / 1e6:.1f} MB, "
               f"{info['tensors']} tensors) sha256 {info['sha256']}")


class Importance(str, Enum):
    magnitude = "magnitude"
    taylor = "taylor"


@commands.command("prune")
def prune(
    checkpoint: Annotated[Path, typer.Argument(help="a segcompress checkpoint (e.g. the teacher)")],
    out: Annotated[Path, typer.Option(help="the pruned checkpoint (must not exist)")],
    macs_ratio: Annotated[float | None, typer.Option(
        help="target MACs as a fraction of the model's (0.5: half)")] = None,
    target_gmacs: Annotated[float | None, typer.Option(
        help="target in GMACs, as `bench flops` counts them (every op, batch 1)")] = None,
    importance: Annotated[Importance, typer.Option(
        help="magnitude (L2 of weights) or taylor (gradients of a few train batches)")]
    = Importance.magnitude,
    steps: Annotated[int, typer.Option(min=1, help="iterative pruning steps")] = 5,
    round_to: Annotated[int, typer.Option(
        min=1, help="channel counts rounded to multiples of")] = 8,
    data: Annotated[Path | None, typer.Option(help="dataset root (Taylor importance)")] = None,
    data_kind: Annotated[DataKind, typer.Option(help="layout of --data")] = DataKind.camvid,
    batches: Annotated[int, typer.Option(min=1, help="train batches per Taylor step")] = 4,
    size: Annotated[str | None, typer.Option(
        help="HxW the MACs are counted at; default: the checkpoint's input size")] = None,
) -> None:
    """Prune channels (Torch-Pruning) to a MAC target: a smaller checkpoint of the same shape.

    GMACs are counted as `bench flops` and every table count them (batch 1, every op)."""
    from compress.evaluate import parse_size
    from compress.prune import prune_checkpoint

    r = prune_checkpoint(checkpoint, out, macs_ratio=macs_ratio, target_gmacs=target_gmacs,
                         importance=importance.value, steps=steps, round_to=round_to, data=data,
                         data_kind=data_kind.value, batches=batches, size=parse_size(size))
    typer.echo(f"pruned {checkpoint}: {r['gmacs_before']:.3f} -> {r['gmacs_after']:.3f} GMACs "
               f"at {r['size'][0]}x{r['size'][1]} (target {r['target_gmacs']:.3f}), params "
               f"{r['params_before'] / 1e6:.2f} M -> {r['params_after'] / 1e6:.2f} M, "
               f"{r['pruned_tensors']} tensors thinner")
    typer.echo(f"checkpoint: {r['out']}")


@commands.command("config")
def config_(
    recipe: Annotated[Path | None, typer.Argument(help="recipe to show (default: the defaults)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted overrides")] = None,
    show: Annotated[bool, typer.Option("--show", help="list every key: type, value, help")] = True,
) -> None:
    """Every recipe key with its type, value (default, or the recipe's) and help."""
    from compress.config import describe_keys, load_config

    cfg = load_config(recipe, overrides) if recipe or overrides else None
    for key, kind, value, text in describe_keys(cfg):
        typer.echo(f"{key:<32} {kind:<28} {value!s:<24} {text}".rstrip())


register_pseudo(commands)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, callback=options,
                  rich_markup_mode=None)  # plain click help: option names whole at 80 columns
app.add_typer(commands)


def main() -> None:
    """``python -m compress.cli``: one clear line for errors a user can fix."""
    from compress.config import suggest_key

    run_cli(app, suggest_key)


if __name__ == "__main__":
    main()
