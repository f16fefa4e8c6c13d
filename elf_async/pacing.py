"""Pacing: an evenly spaced async rate limiter and capped exponential backoff with jitter."""

from __future__ import annotations

import asyncio
import random
import time


class RateLimiter:
    """Spaces acquisitions 1/rate apart (GCRA with a burst of one).

    Even spacing keeps a client under a per-second quota at every instant, which a
    bucket that allows bursts does not. `slow_down` lowers the rate after a throttle
    and `acquire` creeps it back to the configured rate as calls succeed.
    """

    def __init__(self, rate: float, *, name: str = "") -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.name = name
        self.configured = rate
        self.rate = rate
        self._next = 0.0
        self.acquired = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    async def acquire(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await asyncio.sleep(slot - now)
        self.acquired += 1
        stamp = time.monotonic()
        if self.first_at is None:
            self.first_at = stamp
        self.last_at = stamp

    def slow_down(self, factor: float = 0.8, floor_fraction: float = 0.1) -> None:
        """Multiplicative decrease after a throttle (the quota may be lower than configured)."""
        self.rate = max(self.rate * factor, self.configured * floor_fraction)

    def recover(self, step_fraction: float = 0.01) -> None:
        """Additive increase back towards the configured rate after a success."""
        if self.rate < self.configured:
            self.rate = min(self.configured, self.rate + self.configured * step_fraction)

    def achieved_rate(self) -> float | None:
        """Acquisitions per second between the first and the last one."""
        if self.first_at is None or self.last_at is None or self.acquired < 2:
            return None
        span = self.last_at - self.first_at
        return (self.acquired - 1) / span if span > 0 else None


def backoff_delay(attempt: int, *, base: float = 0.1, cap: float = 10.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(cap, base * (2.0**attempt)))
