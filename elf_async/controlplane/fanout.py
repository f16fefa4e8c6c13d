"""Work on many things at once: `concurrency` workers pull the next one, while each AWS API
keeps its own pace inside the control plane."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from elf_async.progress import ProgressSink

T = TypeVar("T")


async def fan_out(
    items: Iterable[T],
    step: Callable[[T], Awaitable[bool]],
    *,
    concurrency: int,
    progress: ProgressSink,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Run `step` on every item (it returns whether the item succeeded), at most `concurrency`
    at a time. Workers take no new item once `stopped()` is true. An exception from a step
    cancels the other workers and propagates: every step is recorded in the ledger around its
    call, so what was in flight is resumed or cleaned later."""
    pending = list(items)
    queue = iter(pending)
    progress.start(len(pending))

    async def worker() -> None:
        for item in queue:  # one iterator shared by all workers: each item is taken once
            progress.advance(ok=await step(item))
            if stopped():
                return

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(pending)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        progress.close()
