"""Errors the CLI turns into one clear line and an exit code."""

from __future__ import annotations


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


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, foreign, or unsafe to load."""
