"""Sharded runs: shard I of N owns a fixed slice of the fleet's thing indexes, and a shared
start instant. Pure values and parsing, no I/O: every layer (create, send, subscribe, clean,
and engines that start shards elsewhere) takes a `Shard` and asks it for its slice and its
share of an account-wide budget.

The slices are contiguous (`Shard.indexes`), so thing names (`<prefix>-<index>`) stay unique
across the fleet whichever machine made them. Budgets the account has once (each API's pace,
the connect rate, the publish rate) are split evenly: every shard takes 1/N of each.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from elf_async.errors import UsageError
from elf_async.units import parse_duration

# (index variable, count variable) of the schedulers whose array jobs we run under.
SHARD_ENVIRONMENTS = (
    ("JOB_COMPLETION_INDEX", "ELF_SHARD_COUNT"),  # Kubernetes Indexed Job
    ("AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE"),  # AWS Batch array job
)
# A --start-at this far in the past is a mistake (a stale script, a wrong clock), not a late
# shard: beyond it the command refuses to start; within it the shard starts late and catches up.
START_TOLERANCE_S = 5.0
_SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
_EPOCH = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"no shard {self.index}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def indexes(self, fleet_size: int) -> range:
        """The thing indexes this shard owns of a fleet of `fleet_size`: a contiguous slice,
        sizes differing by at most one between shards."""
        return range(
            self.index * fleet_size // self.count, (self.index + 1) * fleet_size // self.count
        )

    def share(self, budget: float) -> float:
        """This shard's part of an account-wide budget (a rate): an even split."""
        return budget / self.count

    def as_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str, *, what: str = "--shard") -> Shard:
    """``I/N`` with 0 <= I < N; anything else is one clear line."""
    match = _SHARD.match(text)
    if not match:
        raise UsageError(f"{what} {text!r}: not I/N (shard I of N, 0-based: --shard 0/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise UsageError(f"{what} {text}: the shard count N must be at least 1")
    if not 0 <= index < count:
        raise UsageError(f"{what} {text}: the shard index I must be 0 to {count - 1} (0-based)")
    return Shard(index, count)


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard an array job's environment gives (Kubernetes Indexed Job, AWS Batch), or
    None when none does; an index without its count is a usage error."""
    for index_name, count_name in SHARD_ENVIRONMENTS:
        index, count = env.get(index_name), env.get(count_name)
        if index is None and count is None:
            continue
        if index is None or count is None:
            given, missing = (index_name, count_name) if count is None else (count_name, index_name)
            raise UsageError(f"{given} is set but {missing} is not: set both, or pass --shard I/N")
        return parse_shard(f"{index}/{count}", what=f"{index_name}/{count_name}")
    return None


def choose_shard(given: str | None, env: Mapping[str, str]) -> Shard | None:
    """--shard when given (it wins), else the array job's environment, else None."""
    if given is not None:
        return parse_shard(given)
    return shard_from_env(env)


def parse_start_at(text: str, *, now: float | None = None, what: str = "--start-at") -> float:
    """An RFC 3339 time (``2026-05-01T12:00:00Z``), epoch seconds, or ``+30s`` from now ->
    epoch seconds. More than START_TOLERANCE_S in the past is refused."""
    now = time.time() if now is None else now
    text = text.strip()
    if text.startswith("+"):
        at = now + parse_duration(text[1:], what=what)
    elif _EPOCH.match(text):
        at = float(text)
    else:
        try:
            moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise UsageError(
                f"{what} {text!r}: not a time (RFC 3339 such as 2026-05-01T12:00:00Z, epoch "
                "seconds, or +30s from now)"
            ) from None
        if moment.tzinfo is None:
            raise UsageError(f"{what} {text!r}: give a time zone (Z or +HH:MM)")
        at = moment.timestamp()
    if not math.isfinite(at):
        raise UsageError(f"{what} {text!r}: not a time")
    if at < now - START_TOLERANCE_S:
        raise UsageError(
            f"{what} {text}: {now - at:.1f} s in the past (at most {START_TOLERANCE_S:g} s late "
            "is caught up): give a later time, or +30s"
        )
    return at


def series_origin(start_at: float, now: float) -> float:
    """t = 0 of a run's per-second series: a whole number of seconds before `start_at`, not
    after `now`. Every shard's rows then cover the same wall-clock seconds, so their series
    add up second by second."""
    return start_at - max(0, math.ceil(start_at - now))
