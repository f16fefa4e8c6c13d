"""Waiting for events, never for time: poll until a condition holds.

A test never assumes that something happened because time passed; it waits for the thing
itself (a message counted, a log line written, a process gone) and fails, naming what it
waited for, only when a generous deadline passes without it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.05
TIMEOUT_S = 60.0


def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = TIMEOUT_S) -> None:
    """Return once `condition()` holds; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(POLL_S)


async def wait_until_async(condition: Callable[[], bool], *, what: str) -> None:
    """`wait_until` for a test whose code under test runs in the same event loop."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not condition():  # noqa: ASYNC110 - a log file or a counter has no event
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"waited {TIMEOUT_S:.0f}s for {what}") from None


def log_count(path: Path, pattern: str) -> int:
    """How many lines of the log at `path` match the regular expression `pattern`."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def wait_for_log(path: Path, pattern: str, *, count: int = 1, timeout: float = TIMEOUT_S) -> None:
    """Until `count` lines of the log at `path` match `pattern` (a regular expression)."""
    wait_until(
        lambda: log_count(path, pattern) >= count,
        what=f"{count} lines matching {pattern!r} in {path}",
        timeout=timeout,
    )
