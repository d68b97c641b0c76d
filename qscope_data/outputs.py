"""Where a command writes (`--out`): checked when the flag is parsed, before anything is read or computed.

One helper for every command, so `--out` at an existing file, at a folder where a file is wanted, or under a folder
this user cannot write is one line naming the path (exit 2) rather than a `FileExistsError` / `IsADirectoryError`
about a temp file half-way through a run. Each command's own "finished output" rules (refuse unless --overwrite,
resume a store) stay with the stage, which knows what its output is.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def acquire_lock(out: Path | str, what: str = "--out"):
    """Take the advisory lock (POSIX `fcntl.lockf`) on `out` for this process: a second writer of the same store or
    output is refused at once instead of duplicating the work. The lock file sits beside `out` (`.<name>.lock`),
    so the output folder holds only what the stage writes. A POSIX lock belongs to the process — a child it forked
    (a tokenizer or data-loader helper) does not inherit it — so after kill -9 the kernel drops it at once and a
    resume is never refused. Returns the open lock file (closing it releases the lock)."""
    import fcntl

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    fh = open(path, "a+")
    try:
        fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EAGAIN / EACCES: another process holds it
        fh.close()
        raise UsageError(f"{what} {out}: another qscope process is writing it (lock {path}); wait for it to "
                         "finish or choose another folder") from None
    return fh


@contextmanager
def write_lock(out: Path | str, what: str = "--out") -> Iterator[None]:
    """`acquire_lock` for the duration of a block."""
    fh = acquire_lock(out, what)
    try:
        yield
    finally:
        fh.close()


def reap_temporaries(out: Path | str) -> list[Path]:
    """Remove the hidden `.<name>.*.tmp` folders / files a killed run left beside `out`; call it holding
    `write_lock(out)`, when no other writer of `out` can be alive. Returns what was removed."""
    import shutil

    out = Path(out)
    removed = []
    for tmp in out.parent.glob(f".{out.name}.*.tmp") if out.parent.is_dir() else []:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
