"""The errors a user can fix: the CLI prints these as one line (``--debug`` for a trace)."""

from __future__ import annotations

import click

from compress.config import ConfigError
from compress.data import DataError
from compress.io import UnsafeFileError
from compress.models import ModelError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ModelError, UnsafeFileError, FileNotFoundError, ValueError,
    RuntimeError, click.exceptions.ClickException, KeyboardInterrupt,
)
