"""`subscribe`: one subscriber per thing; loss, duplicates and order from the senders' stamps.

Subscriber j watches the topic of thing j, connected as its `Watch.identity`: by default
thing j's certificate with the client ID `<thing>-watch`, or (`--client-offset N`) thing
N + j itself, so that it runs next to a `send` on the same things: one client ID holds one
connection, and a second one takes it over (elf_async.dataplane.connections counts that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elf_async.dataplane.connections import Connector, Identity
from elf_async.dataplane.mqtt import ConnectFailed, Link
from elf_async.dataplane.payload import read_stamp
from elf_async.metrics import Histogram, Series
from elf_async.stopping import StopSignal

SERIES_FIELDS = ("received", "lost", "duplicates")


@dataclass
class SequenceTracker:
    """Per sending thing: what arrived, judged by the sequence numbers of its messages.

    Memory stays small for in-order streams: everything up to `contiguous` was seen, and only
    the sequence numbers above it are kept.
    """

    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    first: int | None = None
    highest: int = -1
    contiguous: int = -1
    above: set[int] = field(default_factory=set)

    def add(self, seq: int) -> None:
        self.received += 1
        if self.first is None:
            self.first, self.contiguous = seq, seq - 1
        if seq <= self.contiguous or seq in self.above:
            self.duplicates += 1
            return
        if seq < self.highest:
            self.out_of_order += 1
        self.highest = max(self.highest, seq)
        self.above.add(seq)
        while self.contiguous + 1 in self.above:
            self.contiguous += 1
            self.above.discard(self.contiguous)

    @property
    def unique(self) -> int:
        return self.received - self.duplicates

    @property
    def lost(self) -> int:
        """Gaps between the first and the highest sequence number seen."""
        if self.first is None:
            return 0
        return (self.highest - self.first + 1) - self.unique


@dataclass
class Watch:
    """One subscriber connection."""

    identity: Identity
    topic: str
    link: Link | None = None
    received: int = 0
    reconnects: int = 0
    error: str | None = None


@dataclass
class SubscribeResult:
    watches: list[Watch]
    trackers: dict[str, SequenceTracker]
    unstamped: int
    connector: Connector
    latency: Histogram
    series: Series
    outcome: str
    exit_code: int | None
    started_at: float
    ended_at: float
    listen_window_s: float
    group: str | None = None  # a member of this shared subscription group (--shared)


@dataclass
class Subscriber:
    """Subscribes every watch, collects for `duration` seconds (or until a stop)."""

    watches: list[Watch]
    connector: Connector
    qos: int
    duration: float
    on_message: Callable[[str, bytes | bytearray], None] = lambda topic, payload: None
    on_tick: Callable[[dict[str, Any]], None] = lambda row: None
    trackers: dict[str, SequenceTracker] = field(default_factory=dict)
    latency: Histogram = field(default_factory=lambda: Histogram(per_second=True))
    series: Series = field(default_factory=lambda: Series(SERIES_FIELDS))
    unstamped: int = 0
    # A member of a shared subscription group sees a share of each thing's messages: the gaps
    # are the other members' share, not loss (`report merge` of the group's reports counts it).
    group: str | None = None

    def _received(self, watch: Watch, topic: str, payload: bytes | bytearray) -> None:
        now_ms = time.time() * 1000
        watch.received += 1
        stamp = read_stamp(bytes(payload))
        if stamp is None:
            self.unstamped += 1
            tracker = self.trackers.setdefault(topic, SequenceTracker())
            tracker.received += 1
        else:
            self.trackers.setdefault(stamp.thing, SequenceTracker()).add(stamp.seq)
            self.latency.record((now_ms - stamp.ts) / 1000)
        self.on_message(topic, payload)

    def _totals(self) -> dict[str, int]:
        trackers = self.trackers.values()
        return {
            "received": sum(t.received for t in trackers),
            "lost": 0 if self.group is not None else sum(t.lost for t in trackers),
            "duplicates": sum(t.duplicates for t in trackers),
        }

    async def _open(self, watch: Watch, *, first: bool) -> None:
        def handler(topic: str, payload: bytes | bytearray) -> None:
            self._received(watch, topic, payload)

        opener = self.connector.open if first else self.connector.reopen
        watch.link = await opener(watch.identity, on_message=handler)
        try:
            await watch.link.subscribe(watch.topic, self.qos, within=self.connector.timeout)
        except ConnectFailed:
            await watch.link.close()
            watch.link = None
            raise

    async def _keep(self, watch: Watch, stop: StopSignal) -> None:
        try:
            await self._open(watch, first=True)
        except ConnectFailed as exc:
            watch.error = exc.reason
            return
        while (link := watch.link) is not None:
            reason = self.connector.lost(link, await link.lost)
            await link.close()  # gone already: only collects aiomqtt's disconnection error
            watch.link = None
            watch.error = f"lost its connection and never got it back ({reason})"
            if stop.event.is_set():
                return
            with contextlib.suppress(ConnectFailed):
                await self._open(watch, first=False)
                watch.reconnects += 1
                watch.error = None

    async def run(self, stop: StopSignal) -> SubscribeResult:
        started_at = time.time()
        clock = time.monotonic()
        keepers = [asyncio.create_task(self._keep(w, stop)) for w in self.watches]
        ticker = asyncio.create_task(self._tick(clock))
        await stop.sleep(self.duration)
        window = time.monotonic() - clock
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await asyncio.gather(*(w.link.close() for w in self.watches if w.link))
        self.series.sample(
            time.monotonic() - clock, self._totals(), end_to_end=self.latency.take_second()
        )
        return SubscribeResult(
            watches=self.watches,
            trackers=self.trackers,
            unstamped=self.unstamped,
            connector=self.connector,
            latency=self.latency,
            series=self.series,
            outcome=stop.outcome,
            exit_code=stop.exit_code,
            started_at=started_at,
            ended_at=time.time(),
            listen_window_s=window,
            group=self.group,
        )

    async def _tick(self, clock: float) -> None:
        second = 1
        while True:
            await asyncio.sleep(max(0.0, clock + second - time.monotonic()))
            connected = sum(1 for w in self.watches if w.link is not None)
            row = self.series.sample(
                second, self._totals(), connected=connected, end_to_end=self.latency.take_second()
            )
            self.on_tick(row | {"things": len(self.watches), "p99": self.latency.percentile_ms(99)})
            second += 1
