"""A send's counters, named once: one thing's, a fleet's, several workers' added up.

A `Publisher` keeps them as plain ints on the hot path; everything that sums them (the live
view, the per-second series, the report, `send --workers`) goes through `Totals.of`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Totals:
    """The counters, summed: of one thing, a fleet, or the fleets of several workers."""

    scheduled: int = 0  # messages due by the schedule (a thing that never connected owes them)
    published: int = 0  # written to the socket
    acked: int = 0  # acknowledged by the broker (QoS 1)
    failed: int = 0  # never acknowledged (QoS 1), counted at the end
    retransmitted: int = 0  # sent again after a reconnect
    reconnects: int = 0  # connections the broker dropped that were reopened

    @classmethod
    def of(cls, counted: Iterable[Counted]) -> Totals:
        """The sum of every counter over `counted` (publishers, report rows, or Totals)."""
        return cls(*map(sum, zip(*map(_read, counted), strict=True)))

    def as_dict(self) -> dict[str, int]:
        """By name, as the per-second series samples them."""
        return dict(zip(COUNTERS, _read(self), strict=True))


class Counted(Protocol):
    """Anything that keeps the counters of `Totals` under their names."""

    @property
    def scheduled(self) -> int: ...
    @property
    def published(self) -> int: ...
    @property
    def acked(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def retransmitted(self) -> int: ...
    @property
    def reconnects(self) -> int: ...


COUNTERS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Totals))
_read = attrgetter(*COUNTERS)
