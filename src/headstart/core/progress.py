"""Progress for long stages: a live bar on a terminal, a line every few seconds in logs."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress


class ProgressSink(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


class ConsoleProgress:
    """Shows images/s and ETA; rich's bar on a terminal, plain throttled lines otherwise."""

    def __init__(self, stream=None, every_s: float = 5.0, unit: str = "img") -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.unit = unit
        self._bar: Progress | None = None  # on a terminal

    def start(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done = stage, total, 0
        self.t0 = self._last = time.perf_counter()
        if self.stream.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(stage, total=total, rate="")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        rate = self.rate()
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{rate:.0f} {self.unit}/s")
        elif now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            eta = (self.total - self.done) / rate if rate > 0 else 0
            print(
                f"  {self.stage}: {self.done}/{self.total} ({rate:.0f} {self.unit}/s, ETA {_fmt_eta(eta)})",
                file=self.stream,
                flush=True,
            )

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.t0
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        print(
            f"  {self.stage}: {self.done}/{self.total} in {elapsed:.1f}s ({self.rate():.0f} {self.unit}/s)",
            file=self.stream,
            flush=True,
        )
