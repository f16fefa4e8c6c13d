"""The JSON report of a run, schema ``elf-async/report/1``.

Common to `send` and `subscribe`:
  schema, command, version, outcome ("completed" | "interrupted" | "terminated"),
  started_at, ended_at (ISO 8601 UTC), duration_s, options (as given), fleet {fleet_id, things},
  endpoint {host, port, alpn},
  connections {attempted, succeeded, failed, reconnects, things_failed, errors {reason: count}},
  latency_ms {<name>: {count, p50, p90, p99, p999, max, mean}} (milliseconds; null when empty),
  series [{t (seconds since start), <per-second counts>, connected}].
`send` adds:
  messages {qos, scheduled, published, acked, failed, unsent, retransmitted},
  rate {target_per_s, per_thing_per_s, achieved_per_s, publish_window_s},
  latency_ms {connect, ack (PUBACK - due time), ack_from_send (PUBACK - send time),
  lag (send - due time)}, things [{name, topic, scheduled, published, acked, failed, unsent,
  reconnects, error}]; with --workers N > 1, workers {count, lost [why a worker's counts are
  missing]} (the counts of all workers summed, their histograms merged, series merged by second).
`subscribe` adds:
  messages {qos, received, unique, lost, duplicates, out_of_order, unstamped},
  rate {achieved_per_s}, latency_ms {connect, end_to_end (receive time - the message's ts)},
  things [{name, received, unique, lost, duplicates, out_of_order}] per sending thing,
  subscribers [{name, topic, received, reconnects, error}].
Counts are exact: `acked` <= `published` <= `scheduled`; `unsent` = scheduled - published. A
thing that never connected owes its whole schedule (what fell due until the stop, when stopped
early): it counts in `scheduled` and `unsent`. Whether the counts pass is decided in
elf_async.report.verdict.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async import __version__
from elf_async.dataplane.connections import Connector, Endpoint
from elf_async.dataplane.sender import SendResult, Shared
from elf_async.dataplane.subscriber import SubscribeResult
from elf_async.dataplane.tally import Totals
from elf_async.errors import UsageError
from elf_async.files import write_public
from elf_async.metrics import Histogram, merge_series, merged

SCHEMA = "elf-async/report/1"


@dataclass
class ConnectionTally:
    """A connector's counts, detached from it: they pickle, and several of them add up."""

    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    reconnects: int = 0
    things_failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    connect_time: Histogram = field(default_factory=Histogram)

    @classmethod
    def of(cls, connector: Connector) -> ConnectionTally:
        return cls(
            attempted=connector.attempted,
            succeeded=connector.succeeded,
            failed=connector.failed,
            reconnects=connector.reconnects,
            things_failed=connector.things_failed,
            errors=Counter(connector.errors),
            connect_time=connector.connect_time,
        )

    @classmethod
    def merge(cls, parts: Sequence[ConnectionTally]) -> ConnectionTally:
        return cls(
            attempted=sum(p.attempted for p in parts),
            succeeded=sum(p.succeeded for p in parts),
            failed=sum(p.failed for p in parts),
            reconnects=sum(p.reconnects for p in parts),
            things_failed=sum(p.things_failed for p in parts),
            errors=sum((p.errors for p in parts), Counter()),
            connect_time=merged(p.connect_time for p in parts),
        )


@dataclass
class ThingTally:
    """One thing's row of the report."""

    name: str
    index: int
    topic: str
    rate: float
    scheduled: int
    published: int
    acked: int
    failed: int
    retransmitted: int
    reconnects: int
    error: str | None


@dataclass
class SendTally:
    """What a send's report is made of: one process's `SendResult`, or several merged."""

    things: list[ThingTally]
    connections: ConnectionTally
    shared: Shared
    series: list[dict[str, Any]]
    outcome: str
    started_at: float  # epoch seconds
    ended_at: float
    publish_window_s: float
    target_per_s: float
    workers: int = 1
    lost: list[str] = field(default_factory=list)  # workers whose counts are missing, and why

    @classmethod
    def of(cls, result: SendResult) -> SendTally:
        return cls(
            things=[
                ThingTally(
                    name=p.thing.name,
                    index=p.thing.index,
                    topic=p.topic,
                    rate=p.schedule.rate,
                    scheduled=p.scheduled,
                    published=p.published,
                    acked=p.acked,
                    failed=p.failed,
                    retransmitted=p.retransmitted,
                    reconnects=p.reconnects,
                    error=p.error,
                )
                for p in result.publishers
            ],
            connections=ConnectionTally.of(result.connector),
            shared=result.shared,
            series=result.series.rows,
            outcome=result.outcome,
            started_at=result.started_at,
            ended_at=result.ended_at,
            publish_window_s=result.publish_window_s,
            target_per_s=result.target_per_s,
        )

    @classmethod
    def merge(
        cls,
        parts: Sequence[SendTally],
        *,
        missing: Sequence[ThingTally],
        outcome: str,
        started_at: float,
        ended_at: float,
        target_per_s: float,
        lost: list[str],
    ) -> SendTally:
        """Workers' tallies as one (things in fleet order); `missing` are the rows of things
        whose worker never reported."""
        return cls(
            things=sorted([t for p in parts for t in p.things] + list(missing), key=_fleet_order),
            connections=ConnectionTally.merge([p.connections for p in parts]),
            shared=Shared(
                lag=merged(p.shared.lag for p in parts),
                ack=merged(p.shared.ack for p in parts),
                ack_from_send=merged(p.shared.ack_from_send for p in parts),
            ),
            series=merge_series(p.series for p in parts),
            outcome=outcome,
            started_at=started_at,
            ended_at=ended_at,
            publish_window_s=max((p.publish_window_s for p in parts), default=0.0),
            target_per_s=target_per_s,
            workers=len(parts) + len(lost),
            lost=lost,
        )

    def totals(self) -> Totals:
        return Totals.of(self.things)


def _fleet_order(thing: ThingTally) -> int:
    return thing.index


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


def base_report(
    *,
    command: str,
    outcome: str,
    started_at: float,
    ended_at: float,
    options: dict[str, Any],
    fleet_id: str | None,
    things: int,
    endpoint: Endpoint,
    connections: ConnectionTally,
    series: list[dict[str, Any]],
) -> dict[str, Any]:
    """The fields every report has."""
    return {
        "schema": SCHEMA,
        "command": command,
        "version": __version__,
        "outcome": outcome,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_s": round(ended_at - started_at, 3),
        "options": options,
        "fleet": {"fleet_id": fleet_id, "things": things},
        "endpoint": {"host": endpoint.host, "port": endpoint.port, "alpn": endpoint.alpn},
        "connections": {
            "attempted": connections.attempted,
            "succeeded": connections.succeeded,
            "failed": connections.failed,
            "reconnects": connections.reconnects,
            "things_failed": connections.things_failed,
            "errors": dict(connections.errors.most_common()),
        },
        "latency_ms": {"connect": connections.connect_time.summary_ms()},
        "series": series,
    }


def send_report(
    result: SendTally,
    *,
    options: dict[str, Any],
    fleet_id: str | None,
    endpoint: Endpoint,
    qos: int,
) -> dict[str, Any]:
    report = base_report(
        command="send",
        outcome=result.outcome,
        started_at=result.started_at,
        ended_at=result.ended_at,
        options=options,
        fleet_id=fleet_id,
        things=len(result.things),
        endpoint=endpoint,
        connections=result.connections,
        series=result.series,
    )
    totals = result.totals()
    window = result.publish_window_s
    per_thing = [t.rate for t in result.things]
    report["messages"] = {
        "qos": qos,
        "scheduled": totals.scheduled,
        "published": totals.published,
        "acked": totals.acked if qos else None,
        "failed": totals.failed,
        "unsent": totals.scheduled - totals.published,
        "retransmitted": totals.retransmitted,
    }
    report["rate"] = {
        "target_per_s": round(result.target_per_s, 3),
        "per_thing_per_s": round(per_thing[0], 3) if per_thing else None,
        "achieved_per_s": round(totals.published / window, 3) if window > 0 else None,
        "publish_window_s": round(window, 3),
    }
    shared = result.shared
    report["latency_ms"] |= {
        "ack": shared.ack.summary_ms(),
        "ack_from_send": shared.ack_from_send.summary_ms(),
        "lag": shared.lag.summary_ms(),
    }
    report["things"] = [
        {
            "name": t.name,
            "topic": t.topic,
            "scheduled": t.scheduled,
            "published": t.published,
            "acked": t.acked if qos else None,
            "failed": t.failed,
            "unsent": t.scheduled - t.published,
            "reconnects": t.reconnects,
            "error": t.error,
        }
        for t in result.things
    ]
    if result.workers > 1:
        report["workers"] = {"count": result.workers, "lost": result.lost}
    return report


def subscribe_report(
    result: SubscribeResult,
    *,
    options: dict[str, Any],
    fleet_id: str | None,
    endpoint: Endpoint,
    qos: int,
) -> dict[str, Any]:
    report = base_report(
        command="subscribe",
        outcome=result.outcome,
        started_at=result.started_at,
        ended_at=result.ended_at,
        options=options,
        fleet_id=fleet_id,
        things=len(result.watches),
        endpoint=endpoint,
        connections=ConnectionTally.of(result.connector),
        series=result.series.rows,
    )
    trackers = result.trackers
    received = sum(t.received for t in trackers.values())
    report["messages"] = {
        "qos": qos,
        "received": received,
        "unique": sum(t.unique for t in trackers.values()),
        "lost": sum(t.lost for t in trackers.values()),
        "duplicates": sum(t.duplicates for t in trackers.values()),
        "out_of_order": sum(t.out_of_order for t in trackers.values()),
        "unstamped": result.unstamped,
    }
    window = result.listen_window_s
    report["rate"] = {"achieved_per_s": round(received / window, 3) if window > 0 else None}
    report["latency_ms"]["end_to_end"] = result.latency.summary_ms()
    report["things"] = [
        {
            "name": name,
            "received": t.received,
            "unique": t.unique,
            "lost": t.lost,
            "duplicates": t.duplicates,
            "out_of_order": t.out_of_order,
        }
        for name, t in sorted(trackers.items())
    ]
    report["subscribers"] = [
        {
            "name": w.identity.name,
            "topic": w.topic,
            "received": w.received,
            "reconnects": w.reconnects,
            "error": w.error,
        }
        for w in result.watches
    ]
    return report


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report atomically: a reader never sees half a file."""
    try:
        write_public(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"--report {path}: {exc.strerror or exc}") from exc
