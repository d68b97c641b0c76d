"""One progress display for every long step: items done of a total, a rate, elapsed time, ETA and live metrics.

Libraries report through a `Bar`; a disabled bar is a no-op, so a scheduled run's log stays clean while a person at a
terminal sees how far a stage is (`enabled=None`: only on a terminal, `qscope_data.result.interactive`). A light
module: rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import time
from typing import Callable

from qscope_data.result import interactive

REDRAW_S = 0.1  # at most ten redraws a second: advancing per record must cost next to nothing


class Bar:
    """A progress line on stderr. `unit` names what `advance` counts (docs, rows, steps); `rate_unit`, when given,
    names the `work` the rate column counts instead (tokens/s for an encode that advances by documents)."""

    def __init__(self, label: str, total: int | None = None, *, enabled: bool | None = None, unit: str = "",
                 rate_unit: str | None = None, transient: bool = False):
        self.enabled = interactive(enabled)
        self.label, self.total, self.unit, self.rate_unit, self.transient = label, total, unit, rate_unit, transient
        self.done = self.work = 0
        self.t0 = self.drawn = time.perf_counter()

    def __enter__(self) -> "Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                  TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                  console=Console(stderr=True), transient=self.transient)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.label, total=self.total, count=self._count(), rate="", note="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._draw()
            self._rich.__exit__(*exc)

    def _count(self) -> str:
        total = "?" if self.total is None else f"{self.total:,}"
        return f"{self.done:,}/{total} {self.unit}".rstrip()

    def _rate(self) -> str:
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        if self.rate_unit:
            return f"{self.work / seconds:,.0f} {self.rate_unit}/s"
        return f"{self.done / seconds:,.1f} {self.unit or 'it'}/s"

    def advance(self, n: int = 1, *, work: int = 0) -> None:
        """`n` more items done (and `work` more of what the rate counts)."""
        self.done += n
        self.work += work
        if self.enabled and (time.perf_counter() - self.drawn >= REDRAW_S or self.done == self.total):
            self._draw()

    def _draw(self) -> None:
        self.drawn = time.perf_counter()
        self._rich.update(self._task, completed=self.done, count=self._count(), rate=self._rate())

    def skip(self, n: int) -> None:
        """`n` items an earlier run already did (a resumed job): off the total, so rate and ETA stay honest."""
        if self.total is not None:
            self.total -= n
            if self.enabled:
                self._rich.update(self._task, total=self.total, count=self._count())

    def phase(self, label: str, total: int | None = None) -> None:
        """Start the next phase of a multi-step stage: a fresh count on a new line, the finished one kept (a line
        not started yet and without a total is reused)."""
        fresh = self.done == 0 and self.total is None
        if self.enabled:
            self._draw()  # the finished phase's last count
        self.label, self.total, self.done, self.work, self.t0 = label, total, 0, 0, time.perf_counter()
        if self.enabled and fresh:
            self._rich.update(self._task, description=label, total=total, count=self._count())
        elif self.enabled:
            self._task = self._rich.add_task(label, total=total, count=self._count(), rate="", note="")

    def start(self, label: str, total: int | None = None) -> Callable[[int], None]:
        """The callback form libraries take (`progress=bar.start`): start a phase, get its `advance`."""
        self.phase(label, total)
        return self.advance

    def note(self, text: str) -> None:
        """Live metrics or what the step is doing (loss, explained variance, 'reading activations…')."""
        if self.enabled:
            self._rich.update(self._task, note=text)
