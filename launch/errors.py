"""Errors the CLI turns into one clear line and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any


class UserError(Exception):
    """Bad input from the user (spec, CLI argument, checkpoint). The CLI prints
    ``error: <message>`` on one line and exits with ``exit_code`` (2)."""

    exit_code = 2


class SpecError(UserError):
    """A problem in a sweep spec, located by file and key path."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


class SchedulerUnreachable(UserError):
    """The SLURM controller does not answer: nothing was submitted or cancelled. One line, exit 3
    (the code ``sweep status`` also ends with when it could show states from disk alone)."""

    exit_code = 3


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, foreign, or unsafe to load."""


def user_errors_exit_2(command: Callable[..., Any]) -> Callable[..., Any]:
    """For commands that families contribute: a UserError becomes one line on stderr
    and its exit code, also when the command runs outside ``sweep`` (click's CliRunner)."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as e:
            import click

            click.echo(f"error: {e}", err=True)
            raise SystemExit(e.exit_code) from None

    return wrapper
