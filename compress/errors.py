"""The errors a user can fix: the CLI prints these as one line (``--debug`` for a trace).

Every error the toolkit raises for a user to fix derives from :class:`UserError`
(``ConfigError``, ``DataError``, ``ModelError``, ``UnsafeFileError``, ``ZooError``,
``TrainingDiverged``, deploy's ``DeployError`` / ``ManifestError``, :class:`InputError`...),
each also keeping its standard base (``ValueError``, ``RuntimeError``, ``OSError``) for
callers that catch those. Besides them only the library errors that really are bad user
input print as one line (:data:`USER_ERRORS`); anything else is a bug and shows its
traceback (exit code 1).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import yaml
from PIL import Image, UnidentifiedImageError


class UserError(Exception):
    """Base of the toolkit's own errors: something the user can fix, said in one line
    that names the file, key or option."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or inf; the message names epoch, step, the term that went
    non-finite and the last good file."""


class InputError(UserError, ValueError):
    """A value given to a command or function that cannot be used (an option, a size, a
    threshold); the message names it."""


class ModelError(UserError, ValueError):
    """A model that cannot be built or loaded; the message names the file or name."""


try:  # typer >= 0.2x vendors click: its usage errors are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # older typer raises click's own exceptions
    _TyperClickException = click.exceptions.ClickException

USAGE_ERRORS: tuple[type[BaseException], ...] = (
    click.exceptions.ClickException, _TyperClickException,
)

# library errors that are bad user input: a path the user gave that is missing, an image
# PIL cannot read (or a decompression bomb), YAML that does not parse
INPUT_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, UnidentifiedImageError, Image.DecompressionBombError, yaml.YAMLError,
)

class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be (see :func:`sigterm_as_interrupt`): whatever
    cleans up after a Ctrl-C (an export's temp dir and lock, a run's ``FAILED`` file)
    cleans up after a ``kill`` too."""


_sigterm = {"received": False}  # typer turns a KeyboardInterrupt into exit code 130


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (a no-op in
    another thread, where Python cannot install handlers); the previous handler is put
    back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _sigterm["received"] = True
        raise Terminated()

    _sigterm["received"] = False
    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, *INPUT_LIBRARY_ERRORS, *USAGE_ERRORS, KeyboardInterrupt,
)


def error_name(e: BaseException) -> str:
    """The class of ``e`` as a run's ``FAILED`` file records it: a toolkit ``*Error`` with
    the standard exception it specialises, e.g. ``ConfigError(ValueError)`` (the suffix
    names only a category, and ``FAILED`` files said ``ValueError`` before these types
    existed); an error named for what happened (``TrainingDiverged``) and any other
    exception by its own name."""
    name = type(e).__name__
    if isinstance(e, UserError) and name.endswith("Error"):
        base = next((b for b in type(e).__mro__ if b.__module__ == "builtins"
                     and b not in (Exception, BaseException, object)), None)
        if base is not None:
            name = f"{name}({base.__name__})"
    return name


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException, suggest: Callable[[str], str] | None = None,
             limit: int | None = None) -> str:
    """The message of a user error as one line: usage errors with the option they name
    and a pointer to ``--help``, others with their text joined onto one line, cut at
    ``limit`` characters when given (deploy's backends: their libraries' own error types
    spread a reason over many lines).

    ``suggest`` (the CLI hands in :func:`compress.config.suggest_key`: this module imports
    nothing of the project) turns an unknown option into its recipe key's
    ``" (did you mean 'key'?)"``, or ``""``."""
    if isinstance(e, USAGE_ERRORS):
        msg = " ".join(e.format_message().split())
        option = getattr(e, "option_name", None)
        if type(e).__name__ == "NoSuchOption" and option and suggest:  # argparse: --epochs 5
            hint = suggest(option.lstrip("-"))
            if hint:
                msg += (f"; recipe keys are dotted overrides after the options, e.g. "
                        f"{hint.split(chr(39))[1]}=VALUE{hint}")
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            msg += f" (see '{ctx.command_path} --help')"
        return msg
    if isinstance(e, Terminated):
        return "terminated (SIGTERM)"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return (text or type(e).__name__)[:limit]


def run_cli(app, suggest: Callable[[str], str] | None = None) -> None:
    """Run a typer app as a console entry point: errors a user can fix print one
    ``error: ...`` line and exit non-zero (``--debug`` re-raises for the traceback);
    a bare command prints its help. ``suggest``: see :func:`one_line`."""
    import typer

    debug = "--debug" in sys.argv
    try:
        with sigterm_as_interrupt():
            code = app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except USER_ERRORS as e:
        if debug:
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare command: the help
            typer.echo(e.format_message())
            sys.exit(0)
        typer.echo(f"error: {one_line(e, suggest)}", err=True)
        if isinstance(e, Terminated):
            sys.exit(143)
        if isinstance(e, KeyboardInterrupt):
            sys.exit(130)
        sys.exit(getattr(e, "exit_code", 1) if isinstance(e, USAGE_ERRORS) else 1)
    # typer >= 0.2x turns Ctrl-C (and a typer.Exit) into a returned exit code instead of
    # raising it: without this, an interrupted command exited 0
    if isinstance(code, int) and code:
        if code == 130 and _sigterm["received"]:
            typer.echo(f"error: {one_line(Terminated())}", err=True)
            sys.exit(143)
        if code == 130:
            typer.echo(f"error: {one_line(KeyboardInterrupt())}", err=True)
        sys.exit(code)
