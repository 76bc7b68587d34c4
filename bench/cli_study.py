"""``compress compare``: the comparison study (:mod:`bench.study`), mounted by
:mod:`segcompress.cli` under the ``compress`` command beside compress's and deploy's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

commands = typer.Typer()


def train_run(cfg, resume: Path | None, run_dir: Path | None, show: bool) -> None:
    """One missing run of a study, through compress's loop (the teacher trained first when
    the recipe says so): the trainer :func:`bench.study.run_study` is handed."""
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
) -> None:
    """Run (or collect) several recipes over several seeds and write comparison.md/.csv."""
    from bench.study import format_summary, load_study, run_study

    study = load_study(config)
    out = run_study(study, overrides, collect_only=collect_only, show=not quiet, log=typer.echo,
                    train=train_run)
    typer.echo(format_summary(out))
    typer.echo(f"comparison: {out / 'comparison.md'} (+ .csv, .json, curves.png, miou.png)")
