"""Where a command writes (`--out`): checked when the flag is parsed, before anything is read or computed.

One helper for every command, so `--out` at an existing file, at a folder where a file is wanted, or under a folder
this user cannot write is one line naming the path (exit 2) rather than a `FileExistsError` / `IsADirectoryError`
about a temp file half-way through a run. Each command's own "finished output" rules (refuse unless --overwrite,
resume a store) stay with the stage, which knows what its output is.
"""

from __future__ import annotations

import os
from pathlib import Path

from qscope_data.errors import UsageError


def _writable_ancestor(path: Path, what: str = "--out") -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {probe} is not writable")


def check_folder(path: Path | str, what: str = "--out") -> Path:
    """`--out` (or a config's `workdir`) names a folder (new or existing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path}: exists and is not a folder")
    _writable_ancestor(path, what)
    return path


def check_file(path: Path | str) -> Path:
    """`--out` names a file (new, or one to replace)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path}: is a folder; give the path of the file to write")
    _writable_ancestor(path.parent)
    return path


def folder_option(value: Path | None) -> Path | None:
    """typer callback for a folder `--out`."""
    return None if value is None else check_folder(value)


def file_option(value: Path | None) -> Path | None:
    """typer callback for a file `--out`."""
    return None if value is None else check_file(value)
