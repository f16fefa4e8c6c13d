"""The open-loop schedule: when each message of each thing is due. Pure arithmetic, no I/O.

Message k of a thing is due at ``start + phase + k / rate``, whatever happened before:
a publisher that falls behind owes the messages it missed and its lag is measured, so a
stalled generator cannot quietly send less than asked (closed-loop generators do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Schedule(Protocol):
    """What a publisher needs of a schedule: a `ThingSchedule`, or a device's under stages
    (elf_async.dataplane.shape.StagedSchedule)."""

    @property
    def rate(self) -> float: ...
    @property
    def phase(self) -> float: ...
    @property
    def total(self) -> int: ...
    def due(self, seq: int) -> float: ...
    def due_by(self, elapsed: float) -> int: ...


@dataclass(frozen=True, slots=True)
class ThingSchedule:
    """The due times of one thing's messages, relative to the start of the run."""

    rate: float  # messages per second
    phase: float  # offset of message 0, within the first interval
    total: int  # messages this thing sends in the run

    def due(self, seq: int) -> float:
        """Seconds after the start at which message `seq` is due."""
        return self.phase + seq / self.rate

    def due_by(self, elapsed: float) -> int:
        """How many messages are due `elapsed` seconds after the start."""
        if elapsed < self.phase:
            return 0
        return min(self.total, math.floor((elapsed - self.phase) * self.rate + 1e-9) + 1)

    @property
    def last_due(self) -> float:
        return self.due(self.total - 1) if self.total else 0.0


def phase_of(index: int, things: int, rate: float) -> float:
    """Spread the things' first messages evenly over the first interval: no fleet-wide bursts."""
    return (index / things) / rate


def messages_in(duration: float, rate: float, phase: float) -> int:
    """Messages due in ``[0, duration)``: rate x duration, rounded by where the phase falls."""
    return max(0, math.ceil((duration - phase) * rate - 1e-9))


def plan(
    things: int,
    rate: float,
    *,
    duration: float | None = None,
    count: int | None = None,
    indexes: Sequence[int] | None = None,
    fleet: int | None = None,
) -> list[ThingSchedule]:
    """The schedule of every thing, for a `duration` or a `count` of messages per thing.

    A shard's things are `indexes` of a `fleet` of that many: each gets the phase it has in
    the whole fleet's plan, so the shards together send the one fleet-wide schedule."""
    if (duration is None) == (count is None):
        raise ValueError("give exactly one of duration and count")
    indexes = range(things) if indexes is None else indexes
    fleet = things if fleet is None else fleet
    if len(indexes) != things or any(not 0 <= i < fleet for i in indexes):
        raise ValueError(f"{things} things with indexes of a fleet of {fleet}")
    schedules = []
    for index in indexes:
        phase = phase_of(index, fleet, rate)
        total = count if count is not None else messages_in(duration or 0.0, rate, phase)
        schedules.append(ThingSchedule(rate=rate, phase=phase, total=total))
    return schedules
