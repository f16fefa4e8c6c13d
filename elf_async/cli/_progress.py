"""Progress of a batch of things shown: a rich bar on a terminal, a plain line every
`PLAIN_INTERVAL` seconds otherwise (a sign of life in CI logs; a shorter batch writes none, so
that stderr holds only errors), nothing with --quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from elf_async.cli._live import PLAIN_INTERVAL
from elf_async.progress import NoProgress, ProgressSink


class _Counts:
    def __init__(self, label: str) -> None:
        self.label = label
        self.total = 0
        self.ok = 0
        self.failed = 0
        self.started = time.monotonic()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0


class PlainProgress(_Counts):
    """One line every `interval` seconds, for logs."""

    def __init__(self, label: str, *, interval: float = PLAIN_INTERVAL) -> None:
        super().__init__(label)
        self.interval = interval
        self._last = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        self.started = self._last = time.monotonic()

    def advance(self, *, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def _print(self) -> None:
        done = self.ok + self.failed
        rate = self.rate()
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        print(
            f"{self.label}: {done}/{self.total} ({self.failed} failed), "
            f"{rate:.1f} things/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        pass


class RichProgress(_Counts):
    """A progress bar with things/s and ETA."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:.1f} things/s"),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task(label, total=None, rate=0.0, failed=0)

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._bar.update(self._task, total=total)
        self._bar.start()

    def advance(self, *, ok: bool) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self._bar.update(self._task, advance=1, rate=self.rate(), failed=self.failed)

    def close(self) -> None:
        self._bar.stop()


def progress_for(label: str, *, quiet: bool) -> ProgressSink:
    if quiet:
        return NoProgress()
    if sys.stderr.isatty():
        return RichProgress(label)
    return PlainProgress(label)
