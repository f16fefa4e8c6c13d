"""Ctrl-C and SIGTERM during a run: stop scheduling, finish cleanly, report, exit 130 or 143."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from elf_async.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

_EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}


def outcome_of(signum: int | None) -> str:
    """A report's `outcome`: how the command ended, by the first stop signal it received."""
    if signum is None:
        return "completed"
    return "interrupted" if signum == signal.SIGINT else "terminated"


class StopSignal:
    """Turns SIGINT/SIGTERM into an event the run can await; a second signal is more urgent."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.urgent = asyncio.Event()
        self.signal: signal.Signals | None = None
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> StopSignal:
        for signum in _EXIT_CODES:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(signum, self._received, signum)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum in _EXIT_CODES:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(signum)

    def _received(self, signum: signal.Signals) -> None:
        if self.event.is_set():
            self.urgent.set()
        self.signal = self.signal or signum
        self.event.set()

    @property
    def exit_code(self) -> int | None:
        """130 after Ctrl-C, 143 after SIGTERM, None when no signal came."""
        return _EXIT_CODES[self.signal] if self.signal is not None else None

    @property
    def outcome(self) -> str:
        return outcome_of(self.signal)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless a stop comes first; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        return self.event.is_set()
