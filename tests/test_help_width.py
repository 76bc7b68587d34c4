"""Every command's --help is readable at 80 columns: each option name appears whole
(before: rich's table cut them, e.g. ``--dynamic-spat…``)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from bench.cli import app as bench_app
from segcompress.cli import app as compress_app


def _commands() -> list[tuple[typer.Typer, str, list[str]]]:
    out = []
    for app in (compress_app, bench_app):
        group = typer.main.get_command(app)
        for name, cmd in group.commands.items():
            subs = getattr(cmd, "commands", None)
            for sub_name, sub in (subs.items() if subs else [(None, cmd)]):
                names = [o for p in sub.params for o in (*p.opts, *p.secondary_opts)
                         if o.startswith("-")]
                out.append((app, " ".join(filter(None, [name, sub_name])), names))
    return out


COMMANDS = _commands()


def test_the_commands_are_found():
    found = {c for _, c, _ in COMMANDS}
    assert {"export", "train", "eval", "latency", "report"} <= found


@pytest.mark.parametrize("app,command,names", COMMANDS, ids=[c for _, c, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_name_whole(app, command, names):
    r = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "80"},
                           terminal_width=80)
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    words = set(r.output.replace(",", " ").replace("/", " ").split())
    missing = [n for n in names if n not in words and f"{n}=" not in r.output]
    assert not missing, f"{command} --help lacks {missing}:\n{r.output}"
