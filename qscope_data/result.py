"""What a stage's entry point `run(options, inputs, out, *, progress=None)` returns (docs/architecture.md).

A light module (no heavy imports): every stage library and `qscope_data.stages` share it.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

A = TypeVar("A")


@dataclass(frozen=True)
class Result(Generic[A]):
    """A finished stage: the artifact it wrote (as its reader would return it), the paths it wrote (the output folder
    or file under the stage's name first) and small JSON-able stats for summaries."""

    artifact: A
    outputs: dict[str, Path]
    stats: dict[str, Any]


def interactive(progress: bool | None = None) -> bool:
    """Whether to draw progress: as asked, else (None) only where a person watches (a terminal), not in a
    scheduled run's log."""
    return sys.stderr.isatty() if progress is None else progress


def status(progress: bool | None, message: str) -> AbstractContextManager:
    """A one-line status on stderr while a stage without countable steps works (nothing when not `interactive`)."""
    if not interactive(progress):
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)
