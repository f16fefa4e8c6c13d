"""Backoff and the adaptive rate limiter the control plane paces its API calls with."""

from __future__ import annotations

import pytest

from elf_async.pacing import RateLimiter, backoff_delay


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(10, base=0.1, cap=2.0) for _ in range(200)]
    assert max(delays) <= 2.0
    assert len(set(delays)) > 100


async def test_limiter_slows_down_and_recovers() -> None:
    limiter = RateLimiter(10.0)
    limiter.slow_down()
    assert limiter.rate == pytest.approx(8.0)
    for _ in range(100):
        limiter.recover()
    assert limiter.rate == pytest.approx(10.0)
    await limiter.acquire()
    assert limiter.acquired == 1
