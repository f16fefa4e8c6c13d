"""`run`: create → send → clean as one command whose clean-up always runs.

The first Ctrl-C or SIGTERM stops the phase in progress (create is cancelled, send drains
and reports) and the clean-up still runs; a second one aborts the clean-up, leaving the
ledger for a later `clean`. A failed phase, a crash in one, or a failed threshold all go
through the same clean-up. The send phase fails by `send`'s own verdict (elf_async.report.verdict:
a thing that never connected, a message not sent or not acknowledged, a lost --workers
process); the thresholds add to it, they never replace it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from elf_async.controlplane.clean import CleanResult, clean_fleet
from elf_async.controlplane.create import CreateRequest, CreateResult, create_fleet
from elf_async.controlplane.ledger import Ledger
from elf_async.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_TERMINATED,
    EXIT_THRESHOLD,
    ElfError,
    PartialFailure,
)
from elf_async.jobs.target import Aim
from elf_async.progress import ProgressSink
from elf_async.report.model import SendReport
from elf_async.report.thresholds import Threshold, Verdict, evaluate
from elf_async.report.verdict import send_problems
from elf_async.stopping import StopSignal

T = TypeVar("T")
# The send phase: sends from every thing of the fleet, drains once the StopSignal fires
# (without installing signal handlers of its own), and returns its report.
SendStep = Callable[[Aim, StopSignal], Coroutine[Any, Any, SendReport]]
ProgressFactory = Callable[[str], ProgressSink]


class Terminated(BaseException):
    """SIGTERM outside the event loop: unwinds like Ctrl-C so `finally` clean-up runs."""


def signal_exit_code(signum: int) -> int:
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


@dataclass
class RunResult:
    """What happened, for the summary, the report, JUnit and the exit code."""

    create: CreateResult | None = None
    report: SendReport | None = None
    clean: CleanResult | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    error: BaseException | None = None  # the first phase that failed, and why
    failed_phase: str | None = None
    signal: int | None = None  # the first SIGINT/SIGTERM
    aborted: bool = False  # a second signal stopped the clean-up: the fleet is still there
    started_at: float = 0.0  # epoch seconds
    elapsed_s: float = 0.0

    @property
    def thresholds_ok(self) -> bool:
        return all(verdict.ok for verdict in self.verdicts)

    @property
    def exit_code(self) -> int:
        """The first that applies: a signal (130, 143); a failed phase (its error's code,
        1 for a crash), send's own verdict included (`elf_async.report.verdict`: things that never
        connected, messages not sent or not acknowledged, a lost worker); a failed threshold
        (3); else 0. A run passes only when send's verdict and every threshold pass, and a
        load that did not happen is not a threshold miss: 1 wins over 3."""
        if self.signal is not None:
            return signal_exit_code(self.signal)
        if self.error is not None:
            return self.error.exit_code if isinstance(self.error, ElfError) else EXIT_RUNTIME
        return EXIT_OK if self.thresholds_ok else EXIT_THRESHOLD

    @property
    def failure(self) -> str | None:
        """One line saying why the run itself failed, or None."""
        if self.aborted:
            return "interrupted twice: the clean-up was aborted"
        if self.signal is not None:
            return f"interrupted by {signal.Signals(self.signal).name}"
        if self.error is not None:
            return f"{self.failed_phase} failed: {self.error}"
        return None


async def _unless(event: asyncio.Event, coro: Coroutine[Any, Any, T]) -> T | None:
    """The result of `coro`, or None when `event` fires first (`coro` is then cancelled)."""
    task = asyncio.create_task(coro)
    stopper = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    return None if task.cancelled() else task.result()


async def _announce(stop: StopSignal, notify: Callable[[str], None]) -> None:
    await stop.event.wait()
    name = signal.Signals(stop.signal).name if stop.signal else "signal"
    notify(f"{name}: stopping, then cleaning up (Ctrl-C again aborts the clean-up)")
    await stop.urgent.wait()
    notify("stopping now: the clean-up is skipped")


async def run(
    aimed: Aim,
    request: CreateRequest,
    send: SendStep,
    thresholds: Sequence[Threshold],
    *,
    progress: ProgressFactory,
    notify: Callable[[str], None],
    clean_concurrency: int = 16,
    stop: StopSignal | None = None,
) -> RunResult:
    """create → send → clean; the clean-up runs whatever happened before it. `aimed` (with
    `--local` resolved once by the caller) goes to every phase. `stop` is the caller's when
    it has no signals of its own to watch (a cluster's shard, stopped by its driver); else
    Ctrl-C and SIGTERM stop the run."""
    settings = aimed.settings
    started = time.monotonic()
    result = RunResult(started_at=time.time())
    phase = "create"
    with StopSignal() if stop is None else contextlib.nullcontext(stop) as stop:
        announcer = asyncio.create_task(_announce(stop, notify))
        try:
            result.create = await _unless(
                stop.event, create_fleet(settings, request, progress("create"))
            )
            summary = result.create.summary if result.create else None
            if summary and (summary.failed or summary.stopped_early):
                raise PartialFailure(
                    f"{summary.failed} of {summary.attempted} things failed"
                    + (f" ({summary.stopped_early})" if summary.stopped_early else "")
                )
            if not stop.event.is_set():
                phase = "send"
                result.report = await _unless(stop.urgent, send(aimed, stop))
                if result.report is not None:
                    result.verdicts = evaluate(thresholds, result.report)
                    if not stop.event.is_set():  # stopped: the signal is the verdict
                        _check_send(result)
        except Exception as exc:  # any failure, even a bug, still goes through clean-up
            result.error, result.failed_phase = exc, phase
        if result.report is None:  # nothing was sent: no threshold has data
            result.verdicts = evaluate(thresholds, {})
        if not stop.urgent.is_set() and Ledger.exists(settings.state_dir):
            await _clean(aimed, request, result, stop, progress("clean"), clean_concurrency)
        result.signal = stop.signal
        result.aborted = stop.urgent.is_set() and Ledger.exists(settings.state_dir)
        announcer.cancel()
    result.elapsed_s = time.monotonic() - started
    return result


def _check_send(result: RunResult) -> None:
    """`send`'s own verdict (elf_async.report.verdict), with create's unresolved certificates: a
    thing that never connected, a message not sent or not acknowledged, a lost --workers
    process. Thresholds over such a run would judge a load that did not happen, so the run
    fails whatever they say."""
    assert result.report is not None
    unresolved = result.create.recovery.unresolved if result.create else []
    problems = send_problems(result.report, unresolved=unresolved)
    if problems:
        raise PartialFailure("; ".join(problems))


async def _clean(
    aimed: Aim,
    request: CreateRequest,
    result: RunResult,
    stop: StopSignal,
    progress: ProgressSink,
    concurrency: int,
) -> None:
    """Clean the fleet (a shard: its slice); only a second signal stops it. A failure here
    is the run's failure unless an earlier phase already failed."""
    try:
        result.clean = await _unless(
            stop.urgent,
            clean_fleet(
                aimed.settings,
                fleet_id=None,
                concurrency=concurrency,
                progress=progress,
                api_rates=request.api_rates,  # a shard's share, as its create had
                shard=request.shard,
            ),
        )
    except Exception as exc:
        if result.error is None:
            result.error, result.failed_phase = exc, "clean"
        return
    if result.clean and result.clean.summary.failed and result.error is None:
        result.error = PartialFailure(f"{result.clean.summary.failed} things could not be removed")
        result.failed_phase = "clean"
