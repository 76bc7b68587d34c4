"""The ``compress`` console command: compress's commands (train, distill, eval, pack,
prune, config, pseudo-label), deploy's (export) and the comparison study's (compare, from
bench) in one typer app.

It sits above every package, so compress never imports deploy or bench: ``compress eval`` scores
exported artifacts here because this app hands it deploy's predictor loader through the
click context. ``python -m segcompress.cli`` is the same command.
"""

from __future__ import annotations

import typer

from bench import cli_study
from compress import cli as compress_cli
from compress.config import suggest_key
from compress.errors import run_cli
from deploy import cli as deploy_cli
from deploy.runtime import load_predictor

app = typer.Typer(add_completion=False, no_args_is_help=True, help=compress_cli.HELP,
                  rich_markup_mode=None,  # plain click help: option names whole at 80 columns
                  callback=compress_cli.options,
                  context_settings={"obj": {"load_predictor": load_predictor}})
app.add_typer(compress_cli.commands)
app.add_typer(deploy_cli.commands)
app.add_typer(cli_study.commands)


def main() -> None:
    """Console entry point: one clear line for errors a user can fix."""
    run_cli(app, suggest_key)


if __name__ == "__main__":
    main()
