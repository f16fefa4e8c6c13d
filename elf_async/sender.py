"""`send`: a mutual-TLS publisher per thing on one event loop, open-loop schedule, honest counts.

The hot path is `Publisher.pump`: it hands due messages straight to paho (no await per
message) and keeps at most `window` QoS 1 messages unacknowledged; PUBACKs arrive through
`Publisher.acked`. A publisher that falls behind (broker slow, connection lost) owes its
missed messages and sends them when it can; each message's lag behind its due time is
measured. Messages unacknowledged when a connection drops are sent again after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from elf_async.connections import Connector, Identity
from elf_async.metrics import Histogram, Series
from elf_async.mqtt import ConnectFailed, Link
from elf_async.payload import Encoder
from elf_async.schedule import ThingSchedule
from elf_async.stopping import StopSignal

SERIES_FIELDS = ("scheduled", "published", "acked", "failed", "reconnects")
_SENT = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN)  # NO_CONN: resent after the reconnect


@dataclass
class Shared:
    """Histograms every publisher records into (one event loop: no locking)."""

    lag: Histogram = field(default_factory=Histogram)  # send time - due time
    ack: Histogram = field(default_factory=Histogram)  # PUBACK time - due time
    ack_from_send: Histogram = field(default_factory=Histogram)  # PUBACK time - send time


class Publisher:
    """One thing's publishing state; `pump` is the hot path."""

    def __init__(
        self,
        thing: Identity,
        topic: str,
        schedule: ThingSchedule,
        encode: Encoder,
        *,
        qos: int,
        window: int,
        shared: Shared,
    ) -> None:
        self.thing = thing
        self.topic = topic
        self.schedule = schedule
        self.encode = encode
        self.qos = qos
        self.window = window
        self.shared = shared
        self.link: Link | None = None
        self.error: str | None = None
        self.base = 0.0  # monotonic time at which message 0 is due
        self.interval = 1.0 / schedule.rate
        self.scheduled = 0  # messages due so far
        self.next_seq = 0  # next message never published
        self.published = 0
        self.last_published_at = 0.0  # monotonic
        self.acked = 0
        self.failed = 0
        self.retransmitted = 0
        self.reconnects = 0
        self.inflight: dict[int, tuple[int, float, bytes]] = {}  # mid -> seq, sent at, payload
        self.resend: deque[tuple[int, bytes]] = deque()
        self._pump_pending = False
        self.halted = False  # after a stop: publish nothing more, only collect PUBACKs
        self._loop = asyncio.get_running_loop()

    @property
    def owed(self) -> bool:
        """Messages due but not yet published, or published and not yet acknowledged."""
        return self.next_seq < self.scheduled or bool(self.inflight) or bool(self.resend)

    def pump(self) -> None:
        """Publish what is due, oldest first, within the in-flight window."""
        self._pump_pending = False
        link = self.link
        if link is None or self.halted:
            return
        publish = link.paho.publish
        inflight, window, qos, topic = self.inflight, self.window, self.qos, self.topic
        now = time.monotonic()
        while self.resend and len(inflight) < window:
            seq, payload = self.resend.popleft()
            info = publish(topic, payload, qos)
            inflight[info.mid] = (seq, now, payload)
            self.retransmitted += 1
        ts = int(time.time() * 1000)
        record_lag = self.shared.lag.record
        due = self.base + self.next_seq * self.interval
        while self.next_seq < self.scheduled and (qos == 0 or len(inflight) < window):
            seq = self.next_seq
            payload = self.encode(seq, ts)
            info = publish(topic, payload, qos)
            rc = info.rc
            if rc not in _SENT:
                self.failed += 1
            elif qos:
                inflight[info.mid] = (seq, now, payload)
            elif rc:  # QoS 0 without a connection: it stays owed until the reconnect
                return
            self.published += 1
            self.next_seq = seq + 1
            self.last_published_at = now
            record_lag(now - due)
            due += self.interval

    def acked_mid(self, mid: int) -> None:
        """paho's on_publish for QoS 1: the broker acknowledged message `mid`."""
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        seq, sent, _ = entry
        now = time.monotonic()
        self.acked += 1
        self.shared.ack_from_send.record(now - sent)
        self.shared.ack.record(now - (self.base + seq * self.interval))
        if not self._pump_pending and (self.resend or self.next_seq < self.scheduled):
            self._pump_pending = True
            self._loop.call_soon(self.pump)

    def connection_lost(self) -> None:
        """Unacknowledged messages will be sent again on the next connection."""
        self.link = None
        for seq, _, payload in sorted(self.inflight.values()):
            self.resend.append((seq, payload))
        self.inflight.clear()

    def abandon(self) -> None:
        """At the end: what was never acknowledged has failed."""
        if self.qos:
            self.failed += len(self.inflight) + len(self.resend)
            self.inflight.clear()
            self.resend.clear()


@dataclass
class Snapshot:
    """What the live view shows, once a second."""

    phase: str
    elapsed: float
    things: int
    connected: int
    connect_failed: int
    totals: dict[str, int]
    last_second: dict[str, Any]
    target_per_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None


@dataclass
class SendResult:
    """Everything the report needs."""

    publishers: list[Publisher]
    connector: Connector
    shared: Shared
    series: Series
    outcome: str
    exit_code: int | None
    started_at: float  # epoch seconds
    ended_at: float
    publish_window_s: float
    target_per_s: float

    def totals(self) -> dict[str, int]:
        return totals(self.publishers, self.connector)


def totals(publishers: list[Publisher], connector: Connector) -> dict[str, int]:
    result = dict.fromkeys(("scheduled", "published", "acked", "failed", "retransmitted"), 0)
    for p in publishers:
        result["scheduled"] += p.scheduled
        result["published"] += p.published
        result["acked"] += p.acked
        result["failed"] += p.failed
        result["retransmitted"] += p.retransmitted
    result["reconnects"] = connector.reconnects
    return result


@dataclass
class Sender:
    """Runs one `send`: connect phase, open-loop publishing, drain, disconnect."""

    publishers: list[Publisher]
    connector: Connector
    shared: Shared
    drain: float
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None
    series: Series = field(default_factory=lambda: Series(SERIES_FIELDS))
    # Several processes sending one schedule (`send --workers`) share the series' time origin
    # (monotonic) and are told when to start once all are connected (`go` returns the instant).
    clock: float | None = None
    go: Callable[[], Awaitable[float]] | None = None
    _phase: str = "connecting"
    _start: float = 0.0
    _keepers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def target_per_s(self) -> float:
        return sum(p.schedule.rate for p in self.publishers if p.schedule.total)

    async def run(self, stop: StopSignal) -> SendResult:
        started_at = time.time()
        clock = time.monotonic() if self.clock is None else self.clock
        ticker = asyncio.create_task(self._tick(clock))
        try:
            await self._connect_all(stop)
            live = [p for p in self.publishers if p.link is not None]
            start = time.monotonic() + 0.05 if self.go is None else await self.go()
            window = 0.0
            if live and not stop.event.is_set():
                self._phase = "sending"
                self._start = start
                for p in live:
                    p.base = self._start + p.schedule.phase
                window = await self._publish(live, stop)
                self._phase = "draining"
                await self._drain(live, stop)
                # A publisher that fell behind and caught up late stretches the window.
                last = max(p.last_published_at for p in live) - self._start
                window = max(window, last)
            self._phase = "disconnecting"
            await asyncio.gather(*(p.link.close() for p in self.publishers if p.link))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for p in self.publishers:
            p.abandon()
        self._sample(time.monotonic() - clock)
        return SendResult(
            publishers=self.publishers,
            connector=self.connector,
            shared=self.shared,
            series=self.series,
            outcome=stop.outcome,
            exit_code=stop.exit_code,
            started_at=started_at,
            ended_at=time.time(),
            publish_window_s=window,
            target_per_s=self.target_per_s,
        )

    async def _connect_all(self, stop: StopSignal) -> None:
        async def one(p: Publisher) -> None:
            on_publish = p.acked_mid if p.qos else None
            try:
                p.link = await self.connector.open(p.thing, on_publish=on_publish)
            except ConnectFailed as exc:
                p.error = exc.reason

        connecting: asyncio.Future[Any] = asyncio.gather(*(one(p) for p in self.publishers))
        stopped: asyncio.Future[Any] = asyncio.create_task(stop.event.wait())
        await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting

    async def _publish(self, live: list[Publisher], stop: StopSignal) -> float:
        """Run the schedule until its end or a stop; returns the seconds it spans."""
        self._keepers = [asyncio.create_task(self._keep_connected(p, stop)) for p in live]
        scheduler = asyncio.create_task(self._schedule(live))
        stopped = asyncio.create_task(stop.event.wait())
        try:
            await asyncio.wait([scheduler, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            scheduler.cancel()
        # The fleet's schedule spans total/rate seconds: phases only shift each thing within
        # its first interval, so a run that keeps its schedule achieves exactly its target.
        span = max((p.schedule.total / p.schedule.rate for p in live), default=0)
        if stop.event.is_set():
            return max(0.0, min(time.monotonic() - self._start, span))
        return span

    async def _schedule(self, live: list[Publisher]) -> None:
        """The open loop: mark each message due at its time, whatever the broker does."""
        heap = [(p.base, i) for i, p in enumerate(live) if p.schedule.total]
        heapq.heapify(heap)
        while heap:
            now = time.monotonic()
            due, i = heap[0]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                p = live[i]
                p.scheduled += 1
                if p.scheduled < p.schedule.total:
                    heapq.heappush(heap, (p.base + p.scheduled * p.interval, i))
                p.pump()

    async def _keep_connected(self, p: Publisher, stop: StopSignal) -> None:
        """Reconnect a publisher the broker dropped, with backoff, and resume its schedule."""
        while p.link is not None:
            reason = await p.link.lost
            p.connection_lost()
            self.connector.errors[f"connection lost: {reason}"] += 1
            if stop.event.is_set():
                return
            p.reconnects += 1
            on_publish = p.acked_mid if p.qos else None
            p.link = await self.connector.reopen(p.thing, on_publish=on_publish)
            p.pump()

    async def _drain(self, live: list[Publisher], stop: StopSignal) -> None:
        """Wait up to `drain` s for QoS 1 acknowledgements and, unless stopped, for late
        publishers to catch up; after a stop nothing more is published."""
        deadline = time.monotonic() + self.drain
        for p in live:
            p.halted = stop.event.is_set()
            p.pump()
        while time.monotonic() < deadline:
            if stop.event.is_set():
                for p in live:
                    p.halted = True
            if not any(p.inflight if p.halted else p.owed for p in live):
                break
            if stop.urgent.is_set():
                break
            await asyncio.sleep(0.02)
        for keeper in self._keepers:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)

    async def _tick(self, clock: float) -> None:
        """Once a second: a row of the series and a snapshot for the live view."""
        second = 1
        while True:
            await asyncio.sleep(max(0.0, clock + second - time.monotonic()))
            row = self._sample(second)
            self.on_tick(self._snapshot(second, row))
            second += 1

    def _sample(self, second: float) -> dict[str, Any]:
        connected = sum(1 for p in self.publishers if p.link is not None)
        return self.series.sample(
            second, totals(self.publishers, self.connector), connected=connected
        )

    def _snapshot(self, second: float, row: dict[str, Any]) -> Snapshot:
        return Snapshot(
            phase=self._phase,
            elapsed=second,
            things=len(self.publishers),
            connected=row["connected"],
            connect_failed=self.connector.things_failed,
            totals=totals(self.publishers, self.connector),
            last_second=row,
            target_per_s=self.target_per_s,
            ack_p50_ms=self.shared.ack.percentile_ms(50),
            ack_p99_ms=self.shared.ack.percentile_ms(99),
        )
