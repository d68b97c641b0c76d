"""Errors a user can act on.

Every stage raises `UsageError` for bad configuration or input that stops a run before work starts; the CLI turns
it into one line on stderr and exit code 2 (a traceback only with `--debug`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


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


def first_problem(exc: "ValidationError") -> dict:
    """The error worth reporting: an unknown key first (a typo of a key also makes the real key "missing")."""
    errors = exc.errors()
    return next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])


def invalid(exc: "ValidationError", where: str = "", *, flags: bool = False, hint: str = "") -> UsageError:
    """A pydantic error as the one line every stage prints: `WHERE: FIELD: what is wrong (got VALUE)HINT`.

    The one conversion in the project, so a bad flag, config key, inventory entry or plan field reads the same
    everywhere. FIELD is the dotted location (`--kebab-case` when `flags`, for options models built from flags);
    an unknown key is reported before the "missing" error a typo of it also causes; the value is shown when it is
    what was given (not the mapping a missing key belongs to)."""
    err = first_problem(exc)
    loc = [str(p) for p in err.get("loc", ())]
    if flags and loc:
        field = "--" + "-".join(loc).replace("_", "-")
    else:
        field = ".".join(loc) or "(top level)"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        message += f" (unknown key {loc[-1]!r})"
    elif err.get("type") != "missing" and not isinstance(err.get("input"), dict):
        shown = repr(err.get("input"))
        message += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    return UsageError(f"{where}: {field}: {message}{hint}" if where else f"{field}: {message}{hint}")
