"""Live Prometheus metrics of a send, a subscribe or a run (`--metrics-port`).

Nothing is counted twice and nothing is added to the hot path: once a second, on the event
loop, the figures the live view gets (a send's `Snapshot`, a subscribe's tick) become metric
families, bucket counts read from the HDR histograms at fixed bounds; a scrape, on
prometheus_client's server thread, only reads the latest families (one reference, replaced
whole). With `--workers` the parent's merged snapshot is what is served. At the end the
families are rebuilt from the final tally, the figures of the report, and the server can
stay up until one scrape has read them (`--metrics-linger`).

Prometheus conventions: the `elf_` prefix, seconds, `_total` counters; the labels are the
command, the fleet and the shard, never the thing (bounded cardinality).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from elf_async.dataplane.connections import Connector
from elf_async.dataplane.sender import Snapshot
from elf_async.dataplane.subscriber import SequenceTracker, Subscriber, SubscribeResult
from elf_async.dataplane.tally import Totals
from elf_async.errors import UsageError
from elf_async.metrics import Buckets, Histogram
from elf_async.report.document import SendTally
from elf_async.shards import Shard

# prometheus_client and the HTTP server behind it (~50 ms to import) are imported where metrics
# are served or built: a command without --metrics-port does not pay for them.
if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

    from prometheus_client.core import CollectorRegistry, Metric

# Bucket bounds (seconds) shared by every histogram: from a fast local ack to a stalled one.
BOUNDS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
LABELS = ("command", "fleet", "shard")
UNSHARDED = ""  # the shard label of a run that is not one shard of several


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsOptions:
    """`--metrics-port`, `--metrics-addr`, `--metrics-linger` (seconds), checked."""

    port: int
    addr: str
    linger: float


@dataclass(frozen=True, slots=True)
class _Served:
    """What a scrape reads: the latest families, and whether they are the final figures."""

    families: tuple[Metric, ...] = ()
    final: bool = False


class LiveMetrics:
    """The metrics of one command; `observe_*` once a second on the event loop, `conclude_*`
    at the end; `collect` on the server's thread."""

    def __init__(self, *, command: str) -> None:
        self.command = command
        self.shard = UNSHARDED
        self.fleet = ""
        self._served = _Served()
        self.final_scraped = threading.Event()  # a response with the final figures was sent

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families exist once the run has figures."""
        return ()

    def collect(self) -> Iterable[Metric]:
        return self._served.families

    @property
    def concluded(self) -> bool:
        """Whether the final figures are in."""
        return self._served.final

    def for_fleet(self, fleet_id: str | None, shard: Shard | None) -> None:
        """The fleet and the shard the command turned out to send for (the shard a state dir
        records counts, as for its report)."""
        self.fleet = fleet_id or ""
        self.shard = UNSHARDED if shard is None else str(shard)

    # A send (and `run`'s send phase).

    def observe_send(self, snapshot: Snapshot) -> None:
        """A send's figures of this second (its live view's snapshot)."""
        self._serve_send(
            snapshot.totals,
            connected=snapshot.connected,
            failed=snapshot.connect_failed,
            things=snapshot.things,
            histograms=(snapshot.ack, snapshot.lag, snapshot.connect),
            target_per_s=snapshot.target_per_s,
            final=False,
        )

    def conclude_send(self, tally: SendTally) -> None:
        """The final figures, those of the report (every connection closed by now)."""
        failed = tally.connections.things_failed
        self._serve_send(
            tally.totals(),
            connected=0,
            failed=failed,
            things=failed,  # the others are closed: neither connected nor connecting
            histograms=(tally.shared.ack, tally.shared.lag, tally.connections.connect_time),
            target_per_s=tally.target_per_s,
            final=True,
        )

    def _serve_send(
        self,
        totals: Totals,
        *,
        connected: int,
        failed: int,
        things: int,
        histograms: tuple[Histogram, Histogram, Histogram],
        target_per_s: float,
        final: bool,
    ) -> None:
        ack, lag, connect = histograms
        families = [
            self._counter(
                "elf_messages_scheduled", "Messages due by the schedule.", totals.scheduled
            ),
            self._counter(
                "elf_messages_published", "Messages written to the socket.", totals.published
            ),
            self._counter(
                "elf_messages_acked", "QoS 1 messages the broker acknowledged.", totals.acked
            ),
            self._counter(
                "elf_messages_failed", "QoS 1 messages never acknowledged.", totals.failed
            ),
            self._connections(connected=connected, failed=failed, things=things),
            self._counter(
                "elf_reconnects",
                "Connections the broker dropped that were reopened.",
                totals.reconnects,
            ),
            self._histogram(
                "elf_ack_latency_seconds", "PUBACK time minus the message's due time.", ack
            ),
            self._histogram(
                "elf_schedule_lag_seconds", "Send time minus the message's due time.", lag
            ),
            self._histogram(
                "elf_connect_seconds", "A connection attempt's start to its CONNACK.", connect
            ),
            self._gauge(
                "elf_target_rate",
                "Messages per second the schedule asks of the whole fleet.",
                target_per_s,
            ),
        ]
        self._served = _Served(tuple(families), final)

    # A subscribe.

    def observe_subscribe(self, subscriber: Subscriber, row: Mapping[str, Any]) -> None:
        """A subscribe's figures of this second (`row`: its live view's, for `connected`)."""
        self._serve_subscribe(
            subscriber.trackers.values(),
            connected=row["connected"],
            things=len(subscriber.watches),
            connector=subscriber.connector,
            latency=subscriber.latency,
            final=False,
        )

    def conclude_subscribe(self, result: SubscribeResult) -> None:
        """The final figures, those of the report (every connection closed by now)."""
        self._serve_subscribe(
            result.trackers.values(),
            connected=0,
            things=result.connector.things_failed,
            connector=result.connector,
            latency=result.latency,
            final=True,
        )

    def _serve_subscribe(
        self,
        trackers: Iterable[SequenceTracker],
        *,
        connected: int,
        things: int,
        connector: Connector,
        latency: Histogram,
        final: bool,
    ) -> None:
        """The counts summed over the sending things, as the report sums them."""
        received = lost = duplicates = 0
        for tracker in trackers:
            received += tracker.received
            lost += tracker.lost
            duplicates += tracker.duplicates
        failed, reconnects = connector.things_failed, connector.reconnects
        connect = connector.connect_time
        families = [
            self._counter(
                "elf_messages_received", "Messages delivered, duplicates included.", received
            ),
            self._counter(
                "elf_messages_lost",
                "Sequence numbers missing between the first and the highest received.",
                lost,
            ),
            self._counter("elf_messages_duplicate", "Messages received again.", duplicates),
            self._connections(connected=connected, failed=failed, things=things),
            self._counter(
                "elf_reconnects", "Connections the broker dropped that were reopened.", reconnects
            ),
            self._histogram(
                "elf_end_to_end_latency_seconds",
                "Receive time minus the time stamped in the message.",
                latency,
            ),
            self._histogram(
                "elf_connect_seconds", "A connection attempt's start to its CONNACK.", connect
            ),
        ]
        self._served = _Served(tuple(families), final)

    # The families.

    @property
    def _labels(self) -> list[str]:
        return [self.command, self.fleet, self.shard]

    def _counter(self, name: str, documentation: str, value: int) -> Metric:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self._labels, value)
        return family

    def _gauge(self, name: str, documentation: str, value: float) -> Metric:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self._labels, value)
        return family

    def _connections(self, *, connected: int, failed: int, things: int) -> Metric:
        """Clients by state: connected, failed (never connected), connecting (not yet, or
        again after the broker dropped them)."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "elf_connections",
            "MQTT clients by state: connected, connecting (first time or again), failed "
            "(never connected).",
            labels=(*LABELS, "state"),
        )
        states = {
            "connected": connected,
            "connecting": max(0, things - connected - failed),
            "failed": failed,
        }
        for state, count in states.items():
            family.add_metric([*self._labels, state], count)
        return family

    def _histogram(self, name: str, documentation: str, histogram: Histogram) -> Metric:
        from prometheus_client.core import HistogramMetricFamily

        buckets = histogram.buckets(BOUNDS_S)
        family = HistogramMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self._labels, _buckets(buckets), buckets.sum_s)
        return family


def _buckets(buckets: Buckets) -> Sequence[tuple[str, float]]:
    return [
        *((str(float(b)), c) for b, c in zip(buckets.bounds, buckets.cumulative, strict=True)),
        ("+Inf", buckets.count),
    ]


def _app(metrics: LiveMetrics, registry: CollectorRegistry) -> WSGIApplication:
    """prometheus_client's /metrics, which also notes when a response carrying the final
    figures has been written (the linger waits for that, not for the scrape to start)."""
    from wsgiref.types import StartResponse, WSGIEnvironment

    from prometheus_client import make_wsgi_app

    exposition = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        final = metrics.concluded  # then these are the figures the response carries
        yield from exposition(environ, start_response)
        if final:
            metrics.final_scraped.set()

    return app


@contextlib.contextmanager
def serving(options: MetricsOptions | None, *, command: str) -> Iterator[LiveMetrics | None]:
    """Serve /metrics on `options`' address (None: no metrics), as prometheus_client's
    `start_http_server` does. The port is bound here, before the command creates or connects
    anything: one in use, or an address this machine does not have, is bad input. On the way
    out, once the final figures are in, wait until one scrape has read them (at most
    `linger` seconds), then stop serving."""
    if options is None:
        yield None
        return
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import ThreadingWSGIServer

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """No access log on the command's terminal."""

    metrics = LiveMetrics(command=command)
    Histogram().buckets(BOUNDS_S)  # HDR's slot table, built once here, not on the event loop
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    where = f"--metrics-port {options.port}"
    try:
        family, *_, sockaddr = socket.getaddrinfo(
            options.addr, options.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(ThreadingWSGIServer):
            address_family = family

        server = make_server(
            str(sockaddr[0]), options.port, _app(metrics, registry), Server, QuietHandler
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"{where}: {options.addr}:{options.port} is in use") from None
        why = exc.strerror or str(exc)
        raise UsageError(f"{where}: cannot listen on {options.addr}: {why}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield metrics
    finally:
        if metrics.concluded:
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the wait, not the exit
                metrics.final_scraped.wait(options.linger)
        server.shutdown()
        server.server_close()
        thread.join()
