"""``compress compare``: the comparison study (:mod:`bench.study`), mounted by
:mod:`segcompress.cli` under the ``compress`` command beside compress's and deploy's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

commands = typer.Typer()


def train_run(cfg, resume: Path | None, run_dir: Path | None, show: bool) -> None:
    """One missing run of a study, through compress's loop (the teacher trained first when
    the recipe says so): what the launcher runs for each job (a top-level function: a
    submitit job imports it by name)."""
    from compress.train import fit, prepare_teacher

    if cfg.kd.enabled:
        prepare_teacher(cfg, show_progress=show)
    fit(cfg, resume=resume, run_dir=run_dir, show_progress=show)


@commands.command("compare")
def compare_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="study YAML (see configs/camvid/study.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(
        help="dotted overrides for every recipe's run config, e.g. train.epochs=1")] = None,
    collect_only: Annotated[bool, typer.Option("--collect-only", help="train nothing; compare finished runs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    launcher: Annotated[str | None, typer.Option(
        help="local (this process, one run after another) or submitit (a job per recipe x "
             "seed: SLURM, or local subprocesses); default: the study's launcher: block")]
    = None,
    launcher_arg: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE for the launcher (partition=gpu, timeout_min=120, gpus_per_job=1, "
             "cluster=local...); repeat")] = None,
) -> None:
    """Run (or collect) several recipes over several seeds and write comparison.md/.csv."""
    from bench.launch import local_launcher, submitit_launcher
    from bench.study import format_summary, launcher_config, load_study, run_study

    study = load_study(config)
    cfg = launcher_config(study, launcher, launcher_arg or [])
    out_dir = Path(study.output_dir) / study.name
    launch = (submitit_launcher(cfg, out_dir, train_run, log=typer.echo)
              if cfg.kind == "submitit" else local_launcher(train_run))
    out = run_study(study, overrides, collect_only=collect_only, show=not quiet, log=typer.echo,
                    launch=launch)
    typer.echo(format_summary(out))
    typer.echo(f"comparison: {out / 'comparison.md'} (+ .csv, .json, curves.png, miou.png, delta.png)")
