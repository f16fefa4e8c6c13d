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
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from elf_async.dataplane.connections import Connector, Identity
from elf_async.dataplane.mqtt import ConnectFailed, Link
from elf_async.dataplane.mqtt5 import Publish5
from elf_async.dataplane.payload import Encoder
from elf_async.dataplane.schedule import Schedule
from elf_async.dataplane.takeover import Readers, Takeover, Wire
from elf_async.dataplane.tally import Totals
from elf_async.metrics import Histogram, Series
from elf_async.stopping import StopSignal

SERIES_FIELDS = ("scheduled", "published", "acked", "failed", "reconnects")
SERIES_WINDOWS = ("ack", "lag")  # the `Shared` histograms each series row has a `Window` of
_BATCH_BYTES = 1 << 18  # one pump frames at most about this much (then pumps again)
_TICK = 0.001  # the scheduler's shortest sleep (s): messages due within it go together
_BURST = 256  # due messages the scheduler hands out before it yields to the event loop
# Bytes the scheduler lets pumps frame before it yields: far behind schedule every pump frames
# a whole batch, and 256 of them made one loop pass take seconds (a stop acted on seconds late).
_PASS_BYTES = 1 << 20
_WATCH_AFTER = 0.002  # a longer pause of the scheduler: read PUBACKs as they come meanwhile


@dataclass
class Shared:
    """Histograms every publisher records into (one event loop: no locking)."""

    # Per second as well: the series' per-second percentiles (`SERIES_WINDOWS`).
    lag: Histogram = field(default_factory=lambda: Histogram(per_second=True))  # send - due time
    ack: Histogram = field(default_factory=lambda: Histogram(per_second=True))  # PUBACK - due
    ack_from_send: Histogram = field(default_factory=Histogram)  # PUBACK time - send time
    refused: Counter[int] = field(default_factory=Counter)  # MQTT 5 PUBACK reason code -> count


Resent = tuple[tuple[int, bool], ...]
"""Messages framed again (resent first in a batch): seq, and whether it was published before
(a message cut off before all its bytes reached the kernel was not)."""
Batch = tuple[int, int, Resent]
"""What one pump framed, in order: the resent messages, then `new` messages from seq `first`."""


class Publisher:
    """One thing's publishing state; `pump` is the hot path."""

    def __init__(
        self,
        thing: Identity,
        topic: str,
        schedule: Schedule,
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
        self.resend: deque[tuple[int, bytes, bool]] = deque()  # seq, payload, published before
        self._pump_pending = False
        self.halted = False  # after a stop: publish nothing more, only collect PUBACKs
        self._loop = asyncio.get_running_loop()
        self.publish5: Publish5 | None = None  # MQTT 5: what every PUBLISH carries

    @property
    def link(self) -> Link | None:
        return self._link

    def attach(self, link: Link, takeover: Takeover) -> None:
        """A new connection, taken over: all its PUBLISHes go through its Wire. One the broker
        closed before we got here (a session takeover right after its CONNACK) gets no Wire:
        its keeper sees it lost at once and reconnects."""
        self._link = link
        if link.lost.done():
            return
        self.wire = takeover.install(
            link.client,
            self.topic,
            self.qos,
            on_ack=self.acked_mid,
            on_sent=self._sent,
            on_drained=self._schedule_pump,
            **self._wire5(link),
        )

    def _wire5(self, link: Link) -> dict[str, Any]:
        """An MQTT 5 Wire's options: its properties block, encoded once for the connection
        (with the topic alias when asked for and the broker allows it), and `refused_mid`."""
        if self.publish5 is None:
            return {}
        aliased = self.publish5.aliased(link.topic_alias_maximum)
        return {
            "properties": self.publish5.block(alias=aliased),
            "aliased": aliased,
            "on_refused": self.refused_mid,
        }

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

    def pump(self) -> int:
        """Frame what is due, oldest first, within the in-flight window; write it at once.
        Returns the bytes framed."""
        self._pump_pending = False
        wire = self.wire
        if wire is None or self.halted or wire.busy or wire.dead:
            return 0  # a busy wire pumps again once drained; a dead one after the reconnect
        inflight, window, qos = self.inflight, self.window, self.qos
        publish = wire.publish
        now = time.monotonic()
        resent: Resent = ()
        if self.resend:
            again = []
            while self.resend and len(inflight) < window and wire.size < _BATCH_BYTES:
                seq, payload, published = self.resend.popleft()
                mid = self._new_mid()
                publish(payload, mid)
                inflight[mid] = (seq, now, payload)
                again.append((seq, published))
            resent = tuple(again)
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
            return 0
        framed = wire.size
        wire.send((first, seq - first, resent))
        if (
            seq < end
            and end == self.schedule.total  # while the schedule runs, the scheduler comes back
            and (qos == 0 or len(inflight) < window)
            and not wire.busy
        ):
            self._schedule_pump()  # stopped at the batch size: the rest in the next turn
        return framed

    def _schedule_pump(self) -> None:
        if not self._pump_pending:
            self._pump_pending = True
            self._loop.call_soon(self.pump)

    def _sent(self, batch: Batch, start: int, stop: int) -> None:
        """Messages `start` to `stop` of a batch are entirely in the kernel: published now
        (or, for a message published before, retransmitted)."""
        first, _, resent = batch
        now = time.monotonic()
        record_lag = self.shared.lag.record
        for seq, published_before in resent[start:stop]:
            if published_before:
                self.retransmitted += 1
            else:
                self.published += 1
                record_lag(now - (self.base + seq * self.interval))
        lo, hi = max(start - len(resent), 0), stop - len(resent)
        if hi <= lo:
            return
        self.published += hi - lo
        self.last_published_at = now
        due = self.base + (first + lo) * self.interval
        for _ in range(hi - lo):
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

    def refused_mid(self, mid: int, code: int) -> None:
        """An MQTT 5 PUBACK with a reason code of 0x80 or more: message `mid` failed, and the
        reason is counted (`Shared.refused`)."""
        entry = self.inflight.pop(mid, None)
        if entry is None:
            return
        self.failed += 1
        self.shared.refused[code] += 1
        if self.resend or self.next_seq < self.scheduled:
            self._schedule_pump()

    def connection_lost(self) -> None:
        """Unacknowledged messages will be sent again on the next connection."""
        self._requeue()
        self._link, self.wire = None, None

    def _requeue(self) -> None:
        """Put what the connection did not finish back in line, counted by the bytes the
        kernel took: a message of a cut batch whose bytes did not all get there was never
        published. At QoS 1 every unacknowledged message is resent (published or not); at
        QoS 0 only the never published ones are owed again (at most once: no duplicates)."""
        cut = self.wire.unsent if self.wire is not None else None
        never: set[int] = set()
        if cut is not None:
            (first, new, resent), done = cut
            never.update(seq for seq, published in resent[done:] if not published)
            new_done = max(done - len(resent), 0)
            if self.qos:
                never.update(range(first + new_done, first + new))
            else:
                self.next_seq = first + new_done
        for seq, _, payload in sorted(self.inflight.values()):
            self.resend.append((seq, payload, seq not in never))
        self.inflight.clear()

    def abandon(self) -> None:
        """At the end: a published message never acknowledged has failed; one never
        published stays unsent (due, not published)."""
        self._requeue()
        self.failed += sum(1 for _, _, published in self.resend if published)
        self.resend.clear()


class Phase(StrEnum):
    """Where a `Sender` is, in this order."""

    CONNECTING = "connecting"
    SENDING = "sending"
    DRAINING = "draining"
    DISCONNECTING = "disconnecting"


@dataclass
class Snapshot:
    """What the live view shows, once a second."""

    phase: Phase
    elapsed: float
    things: int
    connected: int
    connect_failed: int
    totals: Totals
    last_second: dict[str, Any]
    target_per_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    planned: int  # messages in the whole schedule
    span_s: float  # seconds the schedule spans (`schedule_span`)
    sending_s: float | None  # seconds since the schedule started (None: not yet)
    # The run's histograms so far, for live metrics. In the sending process they are the live
    # ones: read them in the callback, on the event loop (a copy crosses to a --workers parent).
    ack: Histogram = field(default_factory=Histogram)
    lag: Histogram = field(default_factory=Histogram)
    connect: Histogram = field(default_factory=Histogram)


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
    shape: dict[str, Any] | None = None  # stages, storm, churn (`Lifecycle.report`)

    def totals(self) -> Totals:
        return Totals.of(self.publishers)


def schedule_span(schedules: Iterable[Schedule]) -> float:
    """The seconds the fleet's schedule spans, total/rate: phases only shift each thing within
    its first interval, so a run that keeps its schedule achieves exactly its target."""
    return max((s.total / s.rate for s in schedules), default=0.0)


def _span(publishers: list[Publisher]) -> float:
    return schedule_span(p.schedule for p in publishers)


class Shaping(Protocol):
    """The devices' lifecycle under --stages, --churn, --storm (elf_async.dataplane.lifecycle):
    what the `Sender` asks of it, off the constant-rate path."""

    def first(self, p: Publisher) -> bool: ...  # connected before the start
    def begin(self, start: float) -> None: ...  # the schedule's t = 0 (monotonic)
    def tasks(self, stop: StopSignal) -> list[asyncio.Task[None]]: ...  # instead of keepers
    async def schedule(self, readers: Readers) -> None: ...  # instead of `_schedule`
    def gauges(self, elapsed: float) -> dict[str, Any]: ...  # series columns
    def report(self, offset: float) -> dict[str, Any]: ...  # `SendResult.shape`


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
    takeover: Takeover = field(default_factory=Takeover)  # the connections' I/O, read together
    shaped: Shaping | None = None  # --stages, --churn, --storm: the devices come and go
    # `send --commands` (elf_async.dataplane.commands): called on each new connection, once it
    # is taken over (a device subscribes to its commands); and whether the drain must wait on.
    on_attach: Callable[[Publisher], Awaitable[None]] | None = None
    pending: Callable[[], bool] = lambda: False
    _phase: Phase = Phase.CONNECTING
    _start: float = 0.0
    _keepers: list[asyncio.Task[None]] = field(default_factory=list)
    _unconnected: list[Publisher] = field(default_factory=list)  # never connected: owe all
    _clock: float = 0.0

    @property
    def target_per_s(self) -> float:
        return sum(p.schedule.rate for p in self.publishers if p.schedule.total)

    @property
    def connected(self) -> int:
        """Publishers with a live connection (at `go`: the things that will send)."""
        return sum(1 for p in self.publishers if p.link is not None)

    async def run(self, stop: StopSignal) -> SendResult:
        clock = self._clock = time.monotonic() if self.clock is None else self.clock
        started_at = time.time() - (time.monotonic() - clock)  # the series' t = 0, in epoch
        ticker = asyncio.create_task(self._tick(clock))
        # The things that never connected owe what fell due up to this many seconds into the
        # schedule (at the stop), the whole schedule for None, nothing if it never started.
        owed_until: float | None = -1.0
        try:
            await self._connect_all(stop)
            live = [p for p in self.publishers if p.link is not None or self.shaped]
            self._unconnected = [p for p in self.publishers if p.link is None and not self.shaped]
            start = time.monotonic() + 0.05 if self.go is None else await self.go()
            if self.shaped is not None and self.go is None:
                start = clock + math.ceil(start - clock)  # the series' seconds are the stages'
            window = 0.0
            if live and not stop.event.is_set():
                self._phase = Phase.SENDING
                self._start = start
                for p in live:
                    p.base = self._start + p.schedule.phase
                if self.shaped is not None:
                    self.shaped.begin(start)
                window = await self._publish(live, stop)
                owed_until = time.monotonic() - self._start if stop.event.is_set() else None
                self._phase = Phase.DRAINING
                await self._drain(live, stop)
                # A publisher that fell behind and caught up late stretches the window.
                last = max(p.last_published_at for p in live) - self._start
                window = max(window, last)
            elif not stop.event.is_set():
                # Nothing connected: no need to wait out a schedule that every thing owes.
                window, owed_until = _span(self.publishers), None
            self._phase = Phase.DISCONNECTING
            await asyncio.gather(*(p.link.close() for p in self.publishers if p.link))
        finally:
            self.takeover.close()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for p in self.publishers:
            p.abandon()
        self._owe_unconnected(owed_until)
        self._sample(time.monotonic() - clock, Totals.of(self.publishers))
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
            shape=self.shaped.report(self._start - clock) if self.shaped and self._start else None,
        )

    async def _connect_all(self, stop: StopSignal) -> None:
        async def one(p: Publisher) -> None:
            try:
                p.attach(await self.connector.open(p.thing), self.takeover)
                if self.on_attach is not None:
                    await self.on_attach(p)
            except ConnectFailed as exc:
                p.error = exc.reason

        connecting: asyncio.Future[Any] = asyncio.gather(*(one(p) for p in self._first()))
        stopped: asyncio.Future[Any] = asyncio.create_task(stop.event.wait())
        await asyncio.wait([connecting, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting

    def _first(self) -> list[Publisher]:
        """The publishers connected before the start (shaped: those whose window opens there)."""
        if self.shaped is None:
            return self.publishers
        return [p for p in self.publishers if self.shaped.first(p)]

    async def _publish(self, live: list[Publisher], stop: StopSignal) -> float:
        """Run the schedule until its end or a stop; returns the seconds it spans."""
        if self.shaped is not None:
            self._keepers = self.shaped.tasks(stop)
            scheduler = asyncio.create_task(self.shaped.schedule(self.takeover.readers))
        else:
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
        readers = self.takeover.readers
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
                framed = 0
                for _ in range(_BURST):
                    if not heap or heap[0][0] > now or framed >= _PASS_BYTES:
                        break
                    due, i = heapq.heappop(heap)
                    p = live[i]
                    # Everything of this thing due by now (more than one when behind): one batch.
                    caught_up = int((now - p.base) / p.interval) + 1
                    p.scheduled = min(p.schedule.total, max(p.scheduled + 1, caught_up))
                    if p.scheduled < p.schedule.total:
                        heapq.heappush(heap, (p.base + p.scheduled * p.interval, i))
                    framed += p.pump()
                else:
                    framed = _PASS_BYTES
                if framed >= _PASS_BYTES:
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
        while (link := p.link) is not None:
            reason = self.connector.lost(link, await link.lost)
            await link.close()  # gone already: only collects aiomqtt's disconnection error
            p.connection_lost()
            p.error = f"lost its connection and never got it back ({reason})"
            if stop.event.is_set():
                return
            p.attach(await self.connector.reopen(p.thing), self.takeover)
            if self.on_attach is not None:
                await self.on_attach(p)
            p.reconnects += 1
            p.error = None
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
            if not any(p.inflight if p.halted else p.owed for p in live) and not self.pending():
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
            if self._phase == Phase.SENDING:
                self._owe_unconnected(time.monotonic() - self._start)
            now = Totals.of(self.publishers)
            row = self._sample(second, now)
            self.on_tick(self._snapshot(second, row, now))
            second += 1

    def _sample(self, second: float, now: Totals) -> dict[str, Any]:
        windows = {name: getattr(self.shared, name).take_second() for name in SERIES_WINDOWS}
        shaped: dict[str, Any] = {}
        if self.shaped is not None:  # the plan beside what happened: the devices, the stage
            shaped = self.shaped.gauges(self._clock + second - self._start if self._start else -1)
        return self.series.sample(
            second, now.as_dict(), connected=self.connected, **windows, **shaped
        )

    def _snapshot(self, second: float, row: dict[str, Any], now: Totals) -> Snapshot:
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
            planned=sum(p.schedule.total for p in self.publishers),
            span_s=_span(self.publishers),
            sending_s=max(0.0, time.monotonic() - self._start) if self._start else None,
            ack=self.shared.ack,
            lag=self.shared.lag,
            connect=self.connector.connect_time,
        )
