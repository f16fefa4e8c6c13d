"""The JSON report of a run, built from what `send` and `subscribe` counted.

Its layout (schema ``elf-async/report/1``: every field, its type and meaning) is
elf_async.report.model; this module fills it in. The tallies below are a send's counts detached
from the live objects, so that `send --workers` can pickle them and add them up.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

from elf_async import __version__
from elf_async.dataplane.connections import Connector, Endpoint
from elf_async.dataplane.sender import SendResult, Shared
from elf_async.dataplane.subscriber import SubscribeResult
from elf_async.dataplane.tally import Totals
from elf_async.errors import UsageError
from elf_async.files import write_public
from elf_async.metrics import Histogram, merge_series, merged
from elf_async.report.model import (
    SCHEMA,
    AwsMetric,
    AwsMetrics,
    CommonReport,
    LatencySummary,
    ReportHead,
    RunReport,
    RunSummary,
    SendReport,
    SendSecond,
    SubscribeReport,
    SubscribeSecond,
    ThresholdResult,
    UnsentRunReport,
    Workers,
)


@dataclass
class ConnectionTally:
    """A connector's counts, detached from it: they pickle, and several of them add up."""

    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    takeovers: int = 0
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
            reconnect_attempts=connector.reconnect_attempts,
            takeovers=connector.takeovers,
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
            reconnect_attempts=sum(p.reconnect_attempts for p in parts),
            takeovers=sum(p.takeovers for p in parts),
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


def unsent_run_report(
    *,
    outcome: str,
    started_at: float,
    ended_at: float,
    options: dict[str, Any],
    thresholds: list[ThresholdResult],
    run: RunSummary,
) -> UnsentRunReport:
    """`run`'s report when it stopped before its send phase: nothing was sent to count."""
    head = _head("run", outcome, started_at, ended_at, options)
    return {**head, "thresholds": thresholds, "run": run}


def _head(
    command: str, outcome: str, started_at: float, ended_at: float, options: dict[str, Any]
) -> ReportHead:
    return {
        "schema": SCHEMA,
        "command": command,
        "version": __version__,
        "outcome": outcome,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_s": round(ended_at - started_at, 3),
        "options": options,
    }


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
) -> CommonReport:
    """The fields every report of a send or a subscribe has."""
    return {
        **_head(command, outcome, started_at, ended_at, options),
        "fleet": {"fleet_id": fleet_id, "things": things},
        "endpoint": {"host": endpoint.host, "port": endpoint.port, "alpn": endpoint.alpn},
        "connections": {
            "attempted": connections.attempted,
            "succeeded": connections.succeeded,
            "failed": connections.failed,
            "reconnects": connections.reconnects,
            "reconnect_attempts": connections.reconnect_attempts,
            "takeovers": connections.takeovers,
            "things_failed": connections.things_failed,
            "errors": dict(connections.errors.most_common()),
        },
    }


def latency(histogram: Histogram) -> LatencySummary:
    """A histogram's summary in ms; the statistics are null when it is empty."""
    summary = histogram.summary_ms()
    return {
        "count": histogram.count,
        "p50": summary["p50"],
        "p90": summary["p90"],
        "p99": summary["p99"],
        "p999": summary["p999"],
        "max": summary["max"],
        "mean": summary["mean"],
    }


def send_report(
    result: SendTally,
    *,
    options: dict[str, Any],
    fleet_id: str | None,
    endpoint: Endpoint,
    qos: int,
) -> SendReport:
    common = base_report(
        command="send",
        outcome=result.outcome,
        started_at=result.started_at,
        ended_at=result.ended_at,
        options=options,
        fleet_id=fleet_id,
        things=len(result.things),
        endpoint=endpoint,
        connections=result.connections,
    )
    totals = result.totals()
    window = result.publish_window_s
    per_thing = [t.rate for t in result.things]
    shared = result.shared
    several: _Workers = {}
    if result.workers > 1:
        several["workers"] = {"count": result.workers, "lost": result.lost}
    return {
        **common,
        "latency_ms": {
            "connect": latency(result.connections.connect_time),
            "ack": latency(shared.ack),
            "ack_from_send": latency(shared.ack_from_send),
            "lag": latency(shared.lag),
        },
        # Series rows are sampled by name from `Totals` (dataplane.sender.SERIES_FIELDS).
        "series": cast(list[SendSecond], result.series),
        "messages": {
            "qos": qos,
            "scheduled": totals.scheduled,
            "published": totals.published,
            "acked": totals.acked if qos else None,
            "failed": totals.failed,
            "unsent": totals.scheduled - totals.published,
            "retransmitted": totals.retransmitted,
        },
        "rate": {
            "target_per_s": round(result.target_per_s, 3),
            "per_thing_per_s": round(per_thing[0], 3) if per_thing else None,
            "achieved_per_s": round(totals.published / window, 3) if window > 0 else None,
            "publish_window_s": round(window, 3),
        },
        "things": [
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
        ],
        **several,
    }


class _Workers(TypedDict, total=False):
    """`SendReport.workers`, a key that only reports of several workers have (and
    `aws_metrics`, which `--cloudwatch` adds later: typed here so the report's literal is)."""

    workers: Workers
    aws_metrics: AwsMetrics


def subscribe_report(
    result: SubscribeResult,
    *,
    options: dict[str, Any],
    fleet_id: str | None,
    endpoint: Endpoint,
    qos: int,
) -> SubscribeReport:
    connections = ConnectionTally.of(result.connector)
    common = base_report(
        command="subscribe",
        outcome=result.outcome,
        started_at=result.started_at,
        ended_at=result.ended_at,
        options=options,
        fleet_id=fleet_id,
        things=len(result.watches),
        endpoint=endpoint,
        connections=connections,
    )
    trackers = result.trackers
    received = sum(t.received for t in trackers.values())
    window = result.listen_window_s
    return {
        **common,
        "latency_ms": {
            "connect": latency(connections.connect_time),
            "end_to_end": latency(result.latency),
        },
        # Series rows are sampled by name (dataplane.subscriber.SERIES_FIELDS).
        "series": cast(list[SubscribeSecond], result.series.rows),
        "messages": {
            "qos": qos,
            "received": received,
            "unique": sum(t.unique for t in trackers.values()),
            "lost": sum(t.lost for t in trackers.values()),
            "duplicates": sum(t.duplicates for t in trackers.values()),
            "out_of_order": sum(t.out_of_order for t in trackers.values()),
            "unstamped": result.unstamped,
        },
        "rate": {"achieved_per_s": round(received / window, 3) if window > 0 else None},
        "things": [
            {
                "name": name,
                "received": t.received,
                "unique": t.unique,
                "lost": t.lost,
                "duplicates": t.duplicates,
                "out_of_order": t.out_of_order,
            }
            for name, t in sorted(trackers.items())
        ],
        "subscribers": [
            {
                "name": w.identity.client_id,
                "topic": w.topic,
                "received": w.received,
                "reconnects": w.reconnects,
                "error": w.error,
            }
            for w in result.watches
        ],
    }


AWS_METRICS_NOTE = (
    "AWS/IoT counts every client of the account in the region over whole minutes: the sums "
    "include other clients' connections and messages in the window, so they show at least "
    "what AWS IoT saw of this run, never this run alone; null is no data (CloudWatch had no "
    "data point, or had not published it yet), not 0"
)


def aws_metrics(
    report: SendReport,
    sums: Mapping[str, float | None],
    *,
    start: float,
    end: float,
    waited_s: float,
    error: str | None,
) -> AwsMetrics:
    """CloudWatch's AWS/IoT sums (by metric name) next to the client's own counts."""
    messages = report["messages"]

    def metric(name: str, client: int | None) -> AwsMetric:
        return {"metric": name, "sum": sums.get(name), "client": client}

    return {
        "namespace": "AWS/IoT",
        "start": iso(start),
        "end": iso(end),
        "waited_s": round(waited_s, 3),
        "connect_success": metric("Connect.Success", report["connections"]["succeeded"]),
        "connect_throttle": metric("Connect.Throttle", None),
        "publish_in_success": metric(
            "PublishIn.Success", messages["published"] + messages["retransmitted"]
        ),
        "publish_in_throttle": metric("PublishIn.Throttle", None),
        "note": AWS_METRICS_NOTE,
        "error": error,
    }


def write_report(
    path: Path, report: SendReport | SubscribeReport | RunReport | UnsentRunReport
) -> None:
    """Write the report atomically: a reader never sees half a file."""
    try:
        write_public(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"--report {path}: {exc.strerror or exc}") from exc
