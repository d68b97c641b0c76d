"""Errors a user can act on.

Every stage raises `UsageError` for bad configuration or input that stops a run before work starts; the CLI turns
it into one line on stderr and exit code 2 (a traceback only with `--debug`).
"""

from __future__ import annotations


class QscopeError(Exception):
    """Base class of the project's own errors."""

    exit_code = 1


class UsageError(QscopeError):
    """Bad arguments, config, files or data: the message names the file, line or value."""

    exit_code = 2


class SAEFormatError(UsageError):
    """An SAE file or folder that cannot be read as a supported format."""


class DataError(UsageError):
    """An input or store that does not match what the stage expects."""
