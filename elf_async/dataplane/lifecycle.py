"""The devices' lifecycle under a load shape (elf_async.dataplane.shape): each device connects
just before its planned window and disconnects cleanly after it, `--churn` cycles a random
sample of the connected devices, `--storm` drops every connection at one instant and times
the reconnect. Everything connects through the `Connector` (the connect budget, one CONNECT
per client ID per second). Messages stay open-loop: due by each device's schedule whether
it is connected or not, owed while it is not, sent (lag measured) once it is again.

Kept apart from the constant-rate hot path: a staged device is a `StagedPublisher`, whose
due times come from its `StagedSchedule`; the plain `Publisher` never calls a function per
message to know one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import random
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from elf_async.dataplane.connections import Connector
from elf_async.dataplane.mqtt import ConnectFailed, Link
from elf_async.dataplane.sender import (
    _BURST,
    _PASS_BYTES,
    _TICK,
    _WATCH_AFTER,
    Batch,
    Publisher,
)
from elf_async.dataplane.shape import Shape, ShapePlan, StagedSchedule
from elf_async.dataplane.takeover import Readers, Takeover
from elf_async.metrics import Histogram
from elf_async.stopping import StopSignal

CONNECT_LEAD_S = 0.05  # a device connects this long before its window (plus its connect time)
LEAVE_WAIT_S = 5.0  # at most this long for a leaving device's acknowledgements
CHURN_PAUSE_S = 1.0  # a churned client ID reconnects no sooner (AWS: one CONNECT/s per ID)
STORM = "storm"
CHURN = "churn"


class StagedPublisher(Publisher):
    """A publisher whose message `seq` is due at ``base + schedule.due(seq)``."""

    staged: StagedSchedule

    def due_at(self, seq: int) -> float:
        return self.base + self.staged.due(seq)

    def _sent(self, batch: Batch, start: int, stop: int) -> None:
        first, _, resent = batch
        now = time.monotonic()
        record_lag = self.shared.lag.record
        for seq, published_before in resent[start:stop]:
            if published_before:
                self.retransmitted += 1
            else:
                self.published += 1
                record_lag(now - self.due_at(seq))
        lo, hi = max(start - len(resent), 0), stop - len(resent)
        if hi <= lo:
            return
        self.published += hi - lo
        self.last_published_at = now
        for seq in range(first + lo, first + hi):
            record_lag(now - self.due_at(seq))

    def acked_mid(self, mid: int) -> None:
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        seq, sent, _ = entry
        now = time.monotonic()
        self.acked += 1
        self.shared.ack_from_send.record(now - sent)
        self.shared.ack.record(now - self.due_at(seq))
        if self.resend or self.next_seq < self.scheduled:
            self._schedule_pump()


async def run_schedule(publishers: Sequence[StagedPublisher], readers: Readers) -> None:
    """The open loop of `Sender._schedule`, with each device's own due times."""
    heap = [(p.due_at(0), i) for i, p in enumerate(publishers) if p.staged.total]
    heapq.heapify(heap)
    try:
        while heap:
            readers.read()
            now = time.monotonic()
            due, i = heap[0]
            if due > now:
                pause = max(due - now, _TICK)
                readers.watching = pause > _WATCH_AFTER
                await asyncio.sleep(pause)
                continue
            framed = 0
            for _ in range(_BURST):
                if not heap or heap[0][0] > now or framed >= _PASS_BYTES:
                    break
                due, i = heapq.heappop(heap)
                p = publishers[i]
                caught_up = p.staged.due_by(now - p.base)
                p.scheduled = min(p.staged.total, max(p.scheduled + 1, caught_up))
                if p.scheduled < p.staged.total:
                    heapq.heappush(heap, (p.due_at(p.scheduled), i))
                framed += p.pump()
            else:
                framed = _PASS_BYTES
            if framed >= _PASS_BYTES:
                await asyncio.sleep(0)
    finally:
        readers.watching = True


@dataclass
class Device:
    """One device's planned windows and what is being done to its connection."""

    publisher: StagedPublisher
    windows: list[tuple[float, float]]
    cause: str | None = None  # why its connection is being dropped: STORM, CHURN, None (broker)
    churn: asyncio.Event = field(default_factory=asyncio.Event)
    left_at: float = float("-inf")  # monotonic: its last clean disconnect
    off: float = 0.0  # the end of its current window (seconds after the start)


@dataclass
class StormTally:
    """What one `--storm` did: connections dropped, and how they came back."""

    at_s: float  # seconds after the start of the schedule
    dropped: int = 0
    reconnected: int = 0
    reconnect_s: float | None = None  # from the drop to the last reconnect (None: not all)
    connect: Histogram = field(default_factory=Histogram)  # per client, drop to CONNACK
    failed: int = 0  # CONNECT attempts that failed until all were back
    throttled: int = 0  # of which the broker throttled
    pending: set[int] = field(default_factory=set)
    failed_before: int = 0  # the connector's counts at the storm
    throttled_before: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_s": round(self.at_s, 3),
            "dropped": self.dropped,
            "reconnected": self.reconnected,
            "reconnect_s": None if self.reconnect_s is None else round(self.reconnect_s, 3),
            "connect_p99_ms": self.connect.percentile_ms(99),
            "throttled": self.throttled,
            "failed": self.failed,
        }


@dataclass
class ChurnTally:
    """What `--churn` did."""

    per_min: float  # percent of the connected devices per minute
    seed: int
    disconnects: int = 0
    reconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_min_percent": self.per_min,
            "seed": self.seed,
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
        }


def merged_reports(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several processes' `Lifecycle.report`s of one shaped send (`send --workers`: one
    origin, one storm instant) as one: counts summed, the storm's reconnect time and p99 the
    highest (the p99 of all the clients is at most the highest part's)."""
    found = [part for part in parts if part is not None]
    if not found:
        return None
    storms = [part["storm"] for part in found if part["storm"] is not None]
    churns = [part["churn"] for part in found if part["churn"] is not None]
    storm = None
    if storms:
        storm = {
            "at_s": storms[0]["at_s"],
            **{key: sum(s[key] for s in storms) for key in _STORM_COUNTS},
            "reconnect_s": _highest(s["reconnect_s"] for s in storms),
            "connect_p99_ms": max(
                (s["connect_p99_ms"] for s in storms if s["connect_p99_ms"] is not None),
                default=None,
            ),
        }
    churn = None
    if churns:
        churn = {**churns[0], **{k: sum(c[k] for c in churns) for k in _CHURN_COUNTS}}
    return {"stages": found[0]["stages"], "storm": storm, "churn": churn}


_STORM_COUNTS = ("dropped", "reconnected", "throttled", "failed")
_CHURN_COUNTS = ("disconnects", "reconnects")


def _highest(values: Iterable[float | None]) -> float | None:
    """The largest, or None if any is (a part whose clients did not all come back)."""
    seen = list(values)
    return None if any(v is None for v in seen) else max(v for v in seen if v is not None)


def _throttles(connector: Connector) -> int:
    return sum(n for reason, n in connector.errors.items() if "throttl" in reason.lower())


@dataclass
class Lifecycle:
    """Runs the devices of a shaped send beside the `Sender`'s schedule."""

    plan: ShapePlan
    connector: Connector
    takeover: Takeover
    drain: float
    devices: list[Device] = field(default_factory=list)
    start: float = 0.0  # monotonic: the schedule's t = 0
    storm: StormTally | None = None
    churn: ChurnTally | None = None
    _first: set[int] = field(default_factory=set)  # id() of the devices connected at the start
    # Each shape's devices' places, sorted: the places their schedules were planned at (a
    # thing's place in the send's fleet, or its group's), not the ledger's indexes.
    _places: dict[Shape, list[int]] = field(default_factory=dict)

    def adopt(self, publishers: Sequence[Publisher]) -> None:
        """The sender's publishers, every one staged (`SendPlan.publishers` made them); each
        device's windows are its schedule's."""
        self.devices = [
            Device(p, p.staged.windows) for p in publishers if isinstance(p, StagedPublisher)
        ]
        self._places = {}
        for d in self.devices:
            self._places.setdefault(d.publisher.staged.shape, []).append(d.publisher.staged.place)
        for places in self._places.values():
            places.sort()
        self._first = {id(d.publisher) for d in self.devices if d.windows and d.windows[0][0] <= 0}
        if self.plan.storm_at is not None:
            self.storm = StormTally(at_s=self.plan.storm_at)
        if self.plan.churn_per_s is not None:
            self.churn = ChurnTally(per_min=self.plan.churn_per_s * 6000, seed=self.plan.seed)

    def first(self, p: Publisher) -> bool:
        """Connected before the start: its first window opens at the start."""
        return id(p) in self._first

    async def schedule(self, readers: Readers) -> None:
        await run_schedule([d.publisher for d in self.devices], readers)

    def report(self, offset: float) -> dict[str, Any]:
        """The report's `stages` (times in the series' seconds: the schedule started `offset`
        s after its origin), `storm` and `churn`."""
        named: Sequence[tuple[str | None, Shape]] = self.plan.groups or [(None, self.plan.shape)]
        stages = [
            {
                "index": i,
                "start_s": round(offset + t0, 3),
                "end_s": round(offset + t1, 3),
                "devices": list(s.devices),
                "rate": list(s.rate),
                **({} if group is None else {"group": group}),
            }
            for group, shape in named
            for i, (s, (t0, t1)) in enumerate(zip(shape.stages, shape.bounds(), strict=True))
        ]
        return {
            "stages": stages,
            "storm": self.storm.as_dict() if self.storm else None,
            "churn": self.churn.as_dict() if self.churn else None,
        }

    def begin(self, start: float) -> None:
        self.start = start
        for d in self.devices:
            d.publisher.base = start

    def tasks(self, stop: StopSignal) -> list[asyncio.Task[None]]:
        """Every device's task, and the churn's and storm's: cancelled at the end."""
        out = [asyncio.create_task(self._device(d, stop)) for d in self.devices if d.windows]
        if self.churn is not None:
            out.append(asyncio.create_task(self._churn(self.churn)))
        if self.storm is not None:
            out.append(asyncio.create_task(self._storm(self.storm)))
        return out

    def gauges(self, elapsed: float) -> dict[str, Any]:
        """Per-second series columns: the devices planned connected, the stage running."""
        elapsed = round(elapsed, 6)  # a whole second of the series, not 1e-12 before it
        target = sum(  # of each shape's devices, those placed below its planned count
            bisect.bisect_left(places, shape.devices_at(elapsed))
            for shape, places in self._places.items()
        )
        # The stage of the second the row closes (a row is sampled at its second's end);
        # none with groups, whose stages overlap (the report's `stages` has each group's).
        stage = None if self.plan.groups else self.plan.shape.stage_at(elapsed - 0.5)
        return {"target_connected": target, "stage": stage}

    async def _at(self, offset: float) -> None:
        await asyncio.sleep(max(0.0, self.start + offset - time.monotonic()))

    def _lead(self) -> float:
        typical = self.connector.connect_time.percentile_ms(90)
        return CONNECT_LEAD_S + min(2.0, (typical or 0.0) / 1000)

    async def _device(self, d: Device, stop: StopSignal) -> None:
        p = d.publisher
        for on, off in d.windows:
            d.off = off
            if p.link is None:
                await self._at(on - self._lead())
                if stop.event.is_set():
                    return
                try:
                    link = await self.connector.open(p.thing)
                except ConnectFailed as exc:
                    p.error = exc.reason  # its messages stay owed: unsent at the end
                    continue
                p.attach(link, self.takeover)
                p.error = None
                p.pump()
            await self._hold(d, off, stop)
            if stop.event.is_set() or off >= self.plan.shape.span:
                return  # the last window: the sender drains and disconnects
            await self._leave(d, wait_owed=True)

    async def _hold(self, d: Device, off: float, stop: StopSignal) -> None:
        """Keep the device connected until `off`: reconnect what a storm, a churn or the
        broker dropped (messages due meanwhile are owed, not dropped)."""
        p = d.publisher
        while (link := p.link) is not None:
            left = self.start + off - time.monotonic()
            if left <= 0:
                return
            waited: list[asyncio.Future[Any]] = [link.lost]
            if self.churn is not None:
                waited.append(asyncio.ensure_future(d.churn.wait()))
            try:
                done, _ = await asyncio.wait(
                    waited, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for churned in waited[1:]:
                    churned.cancel()  # never left pending (the task is cancelled at the end)
            if not done:
                return
            cause: str | None
            if d.churn.is_set():
                d.churn.clear()
                await self._leave(d, wait_owed=False)
                await asyncio.sleep(max(0.0, d.left_at + CHURN_PAUSE_S - time.monotonic()))
                cause = CHURN
            else:
                cause, d.cause = d.cause, None
                reason = await link.lost
                if cause is None:
                    reason = self.connector.lost(link, reason)
                    p.error = f"lost its connection and never got it back ({reason})"
                await link.close()
                p.connection_lost()
            ended = time.monotonic() >= self.start + off
            if stop.event.is_set() or (ended and not p.owed):
                self._settle_storm(d, cause)
                return  # its window closed meanwhile, with nothing owed: no need to come back
            p.attach(await self.connector.reopen(p.thing), self.takeover)
            p.error = None
            self._reconnected(d, cause)
            p.pump()

    def _reconnected(self, d: Device, cause: str | None) -> None:
        if cause == CHURN and self.churn is not None:
            self.churn.reconnects += 1
            return
        d.publisher.reconnects += 1
        if cause == STORM and (storm := self.storm) is not None:
            now = time.monotonic()
            storm.reconnected += 1
            storm.connect.record(now - (self.start + storm.at_s))
            self._settle_storm(d, cause)

    def _settle_storm(self, d: Device, cause: str | None) -> None:
        """A device the storm dropped is back (or its window closed): all back, timed."""
        storm = self.storm
        if cause != STORM or storm is None:
            return
        storm.pending.discard(id(d))
        if not storm.pending:
            storm.reconnect_s = time.monotonic() - (self.start + storm.at_s)
            storm.failed = self.connector.failed - storm.failed_before
            storm.throttled = _throttles(self.connector) - storm.throttled_before

    async def _leave(self, d: Device, *, wait_owed: bool) -> None:
        """Disconnect cleanly once what the device owes (`wait_owed`) or has in flight is
        acknowledged, waiting at most LEAVE_WAIT_S (the rest is sent after it reconnects)."""
        p = d.publisher
        link = p.link
        if link is None:
            return
        deadline = time.monotonic() + min(LEAVE_WAIT_S, max(self.drain, 0.1))
        if not wait_owed:
            p.halted = True
        while time.monotonic() < deadline and not link.lost.done():
            if not (p.owed if wait_owed else (p.inflight or (p.wire and p.wire.busy))):
                break
            await asyncio.sleep(0.01)
        await link.close()
        p.connection_lost()
        p.halted = False
        d.left_at = time.monotonic()
        if d.cause == STORM:  # cut while it left: it is not coming back in this window
            d.cause = None
            self._settle_storm(d, STORM)
        if not wait_owed and self.churn is not None:
            self.churn.disconnects += 1

    async def _churn(self, churn: ChurnTally) -> None:
        """Each second, cycle the planned share of the connected devices (seeded sample)."""
        rng = random.Random(churn.seed)
        per_s = self.plan.churn_per_s or 0.0
        owed = 0.0
        await self._at(0.0)
        while time.monotonic() < self.start + self.plan.shape.span - 1.0:
            await asyncio.sleep(1.0)
            ready = [
                d
                for d in self.devices
                if d.publisher.link is not None
                and not d.churn.is_set()
                and d.cause is None
                and time.monotonic() - d.left_at >= CHURN_PAUSE_S
            ]
            owed += per_s * len(ready)
            take = min(int(owed), len(ready))
            owed -= take
            for d in rng.sample(ready, take):
                d.churn.set()

    async def _storm(self, storm: StormTally) -> None:
        """At the instant, cut every live connection's transport, as a broker outage does."""
        await self._at(storm.at_s)
        storm.failed_before = self.connector.failed
        storm.throttled_before = _throttles(self.connector)
        for d in self.devices:
            link = d.publisher.link
            if link is None or link.lost.done() or d.off <= storm.at_s:
                continue  # not connected, or leaving: its window is over
            d.cause = STORM
            storm.dropped += 1
            storm.pending.add(id(d))
            _cut(link)
        if not storm.pending:
            storm.reconnect_s = 0.0


def _cut(link: Link) -> None:
    """Abort the connection under the client (no DISCONNECT): the broker sees it vanish."""
    sock = link.paho.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
