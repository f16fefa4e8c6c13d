"""`send`: a mutual-TLS publisher per thing on one event loop, open-loop schedule, honest counts.

The hot path is `Publisher.pump`: it frames the due messages on the connection's `Wire`
(elf_async.dataplane.takeover: own PUBLISH framing, one write per pump, PUBACKs read in bulk;
no await per message) and keeps at most `window` QoS 1 messages unacknowledged; PUBACKs arrive
through `Publisher.acked_mid`. A message counts as published once its bytes are in the kernel.
A publisher that falls behind (broker slow, connection lost) owes its missed messages and sends
them when it can; each message's lag behind its due time is measured. Messages unacknowledged
when a connection drops are sent again after the reconnect. A thing that never connects owes
every message of its schedule (up to the stop, when the run is stopped early): what the fleet
did not send is counted as unsent, never left out of the plan.
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

from elf_async.dataplane.connections import Connector, Identity
from elf_async.dataplane.mqtt import ConnectFailed, Link
from elf_async.dataplane.payload import Encoder
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.dataplane.takeover import Readers, Wire
from elf_async.metrics import Histogram, Series
from elf_async.stopping import StopSignal

SERIES_FIELDS = ("scheduled", "published", "acked", "failed", "reconnects")
_BATCH_BYTES = 1 << 18  # one pump frames at most about this much (then pumps again)
_TICK = 0.001  # the scheduler's shortest sleep (s): messages due within it go together
_BURST = 256  # due messages the scheduler hands out before it yields to the event loop
HOUSEKEEPING_INTERVAL = 1.0  # as aiomqtt's own: paho's keep-alive timers need no finer
_WATCH_AFTER = 0.002  # a longer pause of the scheduler: read PUBACKs as they come meanwhile


@dataclass
class Shared:
    """Histograms every publisher records into (one event loop: no locking)."""

    lag: Histogram = field(default_factory=Histogram)  # send time - due time
    ack: Histogram = field(default_factory=Histogram)  # PUBACK time - due time
    ack_from_send: Histogram = field(default_factory=Histogram)  # PUBACK time - send time


Batch = tuple[int, int, int]
"""What one pump wrote: first new seq, new messages, resent messages."""


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
        self._link: Link | None = None
        self.wire: Wire[Batch] | None = None
        self._mid = 0  # last QoS 1 packet ID used
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
    def link(self) -> Link | None:
        return self._link

    @link.setter
    def link(self, link: Link | None) -> None:
        """Every publishing connection gets its Wire: all its PUBLISHes go through it."""
        self._link = link
        self.wire = None
        if link is not None:
            self.wire = Wire(
                link.paho,
                self.topic,
                self.qos,
                on_ack=self.acked_mid,
                on_sent=self._sent,
                on_drained=self._schedule_pump,
            )

    @property
    def owed(self) -> bool:
        """Messages due but not yet published, or published and not yet acknowledged."""
        return (
            self.next_seq < self.scheduled
            or bool(self.inflight)
            or bool(self.resend)
            or (self.wire is not None and self.wire.busy)
        )

    def _new_mid(self) -> int:
        """The next QoS 1 packet ID not in flight (1-65535)."""
        mid, inflight = self._mid, self.inflight
        while True:
            mid = mid % 65535 + 1
            if mid not in inflight:
                self._mid = mid
                return mid

    def pump(self) -> None:
        """Frame what is due, oldest first, within the in-flight window; write it at once."""
        self._pump_pending = False
        wire = self.wire
        if wire is None or self.halted or wire.busy or wire.dead:
            return  # a busy wire pumps again once drained; a dead one after the reconnect
        inflight, window, qos = self.inflight, self.window, self.qos
        publish = wire.publish
        now = time.monotonic()
        resent = 0
        while self.resend and len(inflight) < window and wire.size < _BATCH_BYTES:
            seq, payload = self.resend.popleft()
            mid = self._new_mid()
            publish(payload, mid)
            inflight[mid] = (seq, now, payload)
            resent += 1
        first = seq = self.next_seq
        end = self.scheduled
        if seq < end:
            ts = int(time.time() * 1000)
            encode = self.encode
            while seq < end and (qos == 0 or len(inflight) < window):
                if wire.size >= _BATCH_BYTES:
                    break
                payload = encode(seq, ts)
                if qos:
                    mid = self._new_mid()
                    inflight[mid] = (seq, now, payload)
                    publish(payload, mid)
                else:
                    publish(payload, 0)
                seq += 1
            self.next_seq = seq
        if seq == first and not resent:
            return
        wire.send((first, seq - first, resent))
        if seq < end and (qos == 0 or len(inflight) < window) and not wire.busy:
            self._schedule_pump()  # stopped at the batch size: the rest in the next turn

    def _schedule_pump(self) -> None:
        if not self._pump_pending:
            self._pump_pending = True
            self._loop.call_soon(self.pump)

    def _sent(self, batch: Batch) -> None:
        """The Wire handed a pump's batch to the kernel: now its messages are published."""
        first, new, resent = batch
        now = time.monotonic()
        self.retransmitted += resent
        if not new:
            return
        self.published += new
        self.last_published_at = now
        record_lag = self.shared.lag.record
        due = self.base + first * self.interval
        for _ in range(new):
            record_lag(now - due)
            due += self.interval

    def acked_mid(self, mid: int) -> None:
        """The Wire read a PUBACK: the broker acknowledged QoS 1 message `mid`."""
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        seq, sent, _ = entry
        now = time.monotonic()
        self.acked += 1
        self.shared.ack_from_send.record(now - sent)
        self.shared.ack.record(now - (self.base + seq * self.interval))
        if self.resend or self.next_seq < self.scheduled:
            self._schedule_pump()

    def connection_lost(self) -> None:
        """Unacknowledged messages will be sent again on the next connection.

        A batch cut short by the loss: at QoS 1 its messages are in flight like the others (the
        broker may have acknowledged some already), so they count as published and are resent
        unless acknowledged; at QoS 0 nothing tracks them, so its new messages are owed again.
        """
        unsent = self.wire.unsent if self.wire is not None else None
        self.link = None
        if unsent is not None:
            if self.qos:
                self._sent(unsent)
            else:
                self.next_seq = unsent[0]
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


def _span(publishers: list[Publisher]) -> float:
    """The seconds the fleet's schedule spans, total/rate: phases only shift each thing within
    its first interval, so a run that keeps its schedule achieves exactly its target."""
    return max((p.schedule.total / p.schedule.rate for p in publishers), default=0.0)


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
    readers: Readers = field(default_factory=Readers)  # the publishing sockets, read together
    _phase: str = "connecting"
    _start: float = 0.0
    _keepers: list[asyncio.Task[None]] = field(default_factory=list)
    _unconnected: list[Publisher] = field(default_factory=list)  # never connected: owe all

    @property
    def target_per_s(self) -> float:
        return sum(p.schedule.rate for p in self.publishers if p.schedule.total)

    @property
    def connected(self) -> int:
        """Publishers with a live connection (at `go`: the things that will send)."""
        return sum(1 for p in self.publishers if p.link is not None)

    async def run(self, stop: StopSignal) -> SendResult:
        started_at = time.time()
        clock = time.monotonic() if self.clock is None else self.clock
        ticker = asyncio.create_task(self._tick(clock))
        housekeeper = asyncio.create_task(self._housekeeping())
        # The things that never connected owe what fell due up to this many seconds into the
        # schedule (at the stop), the whole schedule for None, nothing if it never started.
        owed_until: float | None = -1.0
        try:
            await self._connect_all(stop)
            live = [p for p in self.publishers if p.link is not None]
            self._unconnected = [p for p in self.publishers if p.link is None]
            start = time.monotonic() + 0.05 if self.go is None else await self.go()
            window = 0.0
            if live and not stop.event.is_set():
                self._phase = "sending"
                self._start = start
                for p in live:
                    p.base = self._start + p.schedule.phase
                window = await self._publish(live, stop)
                owed_until = time.monotonic() - self._start if stop.event.is_set() else None
                self._phase = "draining"
                await self._drain(live, stop)
                # A publisher that fell behind and caught up late stretches the window.
                last = max(p.last_published_at for p in live) - self._start
                window = max(window, last)
            elif not stop.event.is_set():
                # Nothing connected: no need to wait out a schedule that every thing owes.
                window, owed_until = _span(self.publishers), None
            self._phase = "disconnecting"
            await asyncio.gather(*(p.link.close() for p in self.publishers if p.link))
        finally:
            self.readers.close()
            for task in (ticker, housekeeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for p in self.publishers:
            p.abandon()
        self._owe_unconnected(owed_until)
        self._sample(time.monotonic() - clock, totals(self.publishers, self.connector))
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
            try:
                self._attach(p, await self.connector.open(p.thing))
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
        span = _span(self.publishers)
        if stop.event.is_set():
            return max(0.0, min(time.monotonic() - self._start, span))
        return span

    async def _schedule(self, live: list[Publisher]) -> None:
        """The open loop: mark each message due at its time, whatever the broker does."""
        heap = [(p.base, i) for i, p in enumerate(live) if p.schedule.total]
        heapq.heapify(heap)
        readers = self.readers
        try:
            while heap:
                readers.read()
                now = time.monotonic()
                due, i = heap[0]
                if due > now:
                    # Not less than a tick: shorter timers round to zero and the loop would spin.
                    pause = max(due - now, _TICK)
                    # Ticking: PUBACKs are read on the next tick, not each on its own wake-up.
                    readers.watching = pause > _WATCH_AFTER
                    await asyncio.sleep(pause)
                    continue
                for _ in range(_BURST):
                    if not heap or heap[0][0] > now:
                        break
                    due, i = heapq.heappop(heap)
                    p = live[i]
                    # Everything of this thing due by now (more than one when behind): one batch.
                    caught_up = int((now - p.base) / p.interval) + 1
                    p.scheduled = min(p.schedule.total, max(p.scheduled + 1, caught_up))
                    if p.scheduled < p.schedule.total:
                        heapq.heappush(heap, (p.base + p.scheduled * p.interval, i))
                    p.pump()
                else:
                    # Behind schedule: let socket callbacks, timers and signal handlers run.
                    await asyncio.sleep(0)
        finally:
            readers.watching = True

    def _owe_unconnected(self, elapsed: float | None) -> None:
        """A thing that never connected owes every message that fell due while the schedule
        ran, as if its publisher were stalled: those due by `elapsed` seconds into the
        schedule (negative: none), or the whole schedule for None."""
        for p in self._unconnected:
            p.scheduled = p.schedule.total if elapsed is None else p.schedule.due_by(elapsed)

    async def _keep_connected(self, p: Publisher, stop: StopSignal) -> None:
        """Reconnect a publisher the broker dropped, with backoff, and resume its schedule."""
        while p.link is not None:
            reason = await p.link.lost
            p.connection_lost()
            self.connector.errors[f"connection lost: {reason}"] += 1
            if stop.event.is_set():
                return
            p.reconnects += 1
            self._attach(p, await self.connector.reopen(p.thing))
            p.pump()

    def _attach(self, p: Publisher, link: Link) -> None:
        """A publisher's new connection: read with the others, kept alive by `_housekeeping`."""
        p.link = link
        assert p.wire is not None
        self.readers.add(p.wire)
        own_timer = link.client._misc_task  # aiomqtt's once-a-second task for this client
        if own_timer is not None:
            own_timer.cancel()

    async def _housekeeping(self) -> None:
        """paho's timers (PINGREQ when idle, a PINGRESP that never came) for every connection
        in one pass a second; aiomqtt runs a task per client for it: 500 wake-ups a second."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            for p in self.publishers:
                link = p.link
                if link is not None and not link.lost.done():
                    link.paho.loop_misc()

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
            if self._phase == "sending":
                self._owe_unconnected(time.monotonic() - self._start)
            now = totals(self.publishers, self.connector)
            row = self._sample(second, now)
            self.on_tick(self._snapshot(second, row, now))
            second += 1

    def _sample(self, second: float, now: dict[str, int]) -> dict[str, Any]:
        return self.series.sample(second, now, connected=self.connected)

    def _snapshot(self, second: float, row: dict[str, Any], now: dict[str, int]) -> Snapshot:
        return Snapshot(
            phase=self._phase,
            elapsed=second,
            things=len(self.publishers),
            connected=row["connected"],
            connect_failed=self.connector.things_failed,
            totals=now,
            last_second=row,
            target_per_s=self.target_per_s,
            ack_p50_ms=self.shared.ack.percentile_ms(50),
            ack_p99_ms=self.shared.ack.percentile_ms(99),
        )
