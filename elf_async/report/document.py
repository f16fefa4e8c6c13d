"""The JSON report of a run, built from what `send` and `subscribe` counted.

Its layout (schema ``elf-async/report/2``: every field, its type and meaning) is
elf_async.report.model; this module fills it in. The tallies below are a send's counts detached
from the live objects, so that `send --workers` can pickle them and add them up. A tally's
series rows hold each second's histograms as `metrics.Window`s; the report shows their
percentiles as columns and keeps their encodings in `histograms`, from which `report merge`
rebuilds the rows (`windowed_series`).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypedDict, cast

from elf_async import __version__
from elf_async.dataplane.commands import CommandTally
from elf_async.dataplane.connections import Connector, Endpoint
from elf_async.dataplane.lifecycle import merged_reports
from elf_async.dataplane.mqtt5 import MQTT_5, MQTT_311, reason_counts
from elf_async.dataplane.sender import SERIES_WINDOWS, SendResult, Shared
from elf_async.dataplane.subscriber import SequenceTracker, SubscribeResult
from elf_async.dataplane.tally import Totals
from elf_async.errors import UsageError
from elf_async.files import write_public
from elf_async.metrics import EMPTY_WINDOW, Histogram, Window, merge_series, merged
from elf_async.report.model import (
    SCHEMA,
    AwsMetric,
    AwsMetrics,
    Churn,
    Commands,
    CommonReport,
    LatencySummary,
    ReportHead,
    RunReport,
    RunSummary,
    Scenario,
    ScenarioGroup,
    SendHistograms,
    SendReport,
    SendSecond,
    SendStage,
    SendThing,
    ShardPart,
    StartInstant,
    Storm,
    SubscribeHistograms,
    SubscribeReport,
    SubscribeSecond,
    ThresholdResult,
    UnsentRunReport,
    Workers,
)
from elf_async.shards import Shard


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
    shape: dict[str, Any] | None = None  # stages, storm, churn of a shaped send

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
            shape=result.shape,
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
                refused=sum((p.shared.refused for p in parts), Counter()),
            ),
            series=merge_series(p.series for p in parts),
            outcome=outcome,
            started_at=started_at,
            ended_at=ended_at,
            publish_window_s=max((p.publish_window_s for p in parts), default=0.0),
            target_per_s=target_per_s,
            workers=len(parts) + len(lost),
            lost=lost,
            shape=merged_reports([p.shape for p in parts]),
        )

    def totals(self) -> Totals:
        return Totals.of(self.things)


def _fleet_order(thing: ThingTally) -> int:
    return thing.index


# Each second's histograms of a series row: the window's name, and its columns' prefix.
SEND_WINDOWS: Final = {name: name for name in SERIES_WINDOWS}
SUBSCRIBE_WINDOWS: Final = {"end_to_end": "e2e"}


def text(encoded: bytes) -> str:
    """An HDR encoding (base64, so ASCII) as the report's JSON text."""
    return encoded.decode("ascii")


def report_series(
    rows: Sequence[dict[str, Any]], windows: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, str | None]]]:
    """A tally's rows as the report's: each `Window` becomes its p50/p99 columns, and its
    encoding goes to the row's entry of `histograms.seconds` (null when nothing was recorded)."""
    series, seconds = [], []
    for row in rows:
        out = {name: value for name, value in row.items() if not isinstance(value, Window)}
        encodings: dict[str, str | None] = {}
        for name, prefix in windows.items():
            window = row.get(name, EMPTY_WINDOW)
            out[f"{prefix}_p50_ms"] = window.p50_ms
            out[f"{prefix}_p99_ms"] = window.p99_ms
            encodings[name] = text(window.encoded) if window.encoded else None
        series.append(out)
        seconds.append(encodings)
    return series, seconds


def windowed_series(
    series: Sequence[Mapping[str, Any]],
    seconds: Sequence[Mapping[str, str | None]],
    windows: dict[str, str],
    *,
    shift: float = 0.0,
) -> list[dict[str, Any]]:
    """`report_series` undone: a report's rows with their `Window`s back (from their columns
    and encodings), `t` moved by `shift`."""
    rows = []
    for row, encodings in zip(series, seconds, strict=True):
        out = {name: value for name, value in row.items() if not name.endswith(_PERCENTILES)}
        out["t"] = row["t"] + shift
        for name, prefix in windows.items():
            encoded = encodings.get(name)
            out[name] = (
                Window(encoded.encode(), row[f"{prefix}_p50_ms"], row[f"{prefix}_p99_ms"])
                if encoded
                else EMPTY_WINDOW
            )
        rows.append(out)
    return rows


_PERCENTILES: Final = ("_p50_ms", "_p99_ms")


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
        "python": platform.python_version(),
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
    placement: Sharding,
    mqtt_version: str = MQTT_311,
) -> CommonReport:
    """The fields every report of a send or a subscribe has."""
    return {
        **_head(command, outcome, started_at, ended_at, options),
        **placement,  # type: ignore[typeddict-item]
        "fleet": {"fleet_id": fleet_id, "things": things},
        "endpoint": {"host": endpoint.host, "port": endpoint.port, "alpn": endpoint.alpn},
        "mqtt_version": mqtt_version,
        "transport": endpoint.label,
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


class Sharding(TypedDict, total=False):
    """The keys only a sharded (--shard) or synchronized (--start-at) report has."""

    shard: ShardPart
    start: StartInstant


def sharding(*, shard: Shard | None, start_at: float | None, late_start_s: float) -> Sharding:
    """The sharding fields of a report: which shard it is, and its --start-at."""
    fields: Sharding = {}
    if shard is not None:
        fields["shard"] = {"index": shard.index, "count": shard.count}
    if start_at is not None:
        fields["start"] = {"at": iso(start_at), "late_start_s": round(late_start_s, 3)}
    return fields


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
    placement: Sharding | None = None,
    commands: CommandTally | None = None,
    mqtt_version: str = MQTT_311,
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
        placement=placement or Sharding(),
        mqtt_version=mqtt_version,
    )
    totals = result.totals()
    window = result.publish_window_s
    per_thing = [t.rate for t in result.things]
    shared = result.shared
    several: _Workers = {}
    if result.workers > 1:
        several["workers"] = {"count": result.workers, "lost": result.lost}
    if result.shape is not None:  # --stages, --churn, --storm: `stages`, `storm`, `churn`
        several.update(cast(Any, result.shape))
    if commands is not None:
        several["commands"] = commands_section(commands)
    if mqtt_version == MQTT_5:
        several["reason_codes"] = reason_counts(result.shared.refused)
    series, seconds = report_series(result.series, SEND_WINDOWS)
    histograms: SendHistograms = {
        "connect": text(result.connections.connect_time.encode()),
        "ack": text(shared.ack.encode()),
        "ack_from_send": text(shared.ack_from_send.encode()),
        "lag": text(shared.lag.encode()),
        "seconds": cast(Any, seconds),
    }
    if commands is not None:
        histograms["commands"] = text(commands.round_trip.encode())
    return {
        **common,
        "latency_ms": {
            "connect": latency(result.connections.connect_time),
            "ack": latency(shared.ack),
            "ack_from_send": latency(shared.ack_from_send),
            "lag": latency(shared.lag),
        },
        # Series rows are sampled by name from `Totals` (dataplane.sender.SERIES_FIELDS).
        "series": cast(list[SendSecond], series),
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
        "histograms": histograms,
    }


@dataclass
class GroupRow:
    """A scenario group as planned: the report counts its `things`' rows."""

    name: str
    qos: int
    things: set[str] = field(default_factory=set)
    planned: int = 0
    per_thing_per_s: float | None = None


def scenario_section(
    things: Sequence[SendThing], *, file: str, groups: Sequence[GroupRow]
) -> Scenario:
    """The report's `scenario`: each group's planned messages and its things' counts."""
    rows: list[ScenarioGroup] = []
    for group in groups:
        mine = [t for t in things if t["name"] in group.things]
        acked = sum(t["acked"] or 0 for t in mine)
        rate = group.per_thing_per_s
        rows.append(
            {
                "name": group.name,
                "things": len(group.things),
                "qos": group.qos,
                "per_thing_per_s": None if rate is None else round(rate, 3),
                "planned": group.planned,
                "scheduled": sum(t["scheduled"] for t in mine),
                "published": sum(t["published"] for t in mine),
                "acked": acked if group.qos else None,
                "failed": sum(t["failed"] for t in mine),
                "unsent": sum(t["unsent"] for t in mine),
            }
        )
    return {"file": file, "groups": rows}


class _Workers(TypedDict, total=False):
    """`SendReport.workers`, a key that only reports of several workers have (and
    `aws_metrics` and `scenario`, which `--cloudwatch` and `--scenario` add later: typed here
    so the report's literal is; and `commands`, which only reports of `--commands` have)."""

    workers: Workers
    aws_metrics: AwsMetrics
    stages: list[SendStage]
    storm: Storm | None
    churn: Churn | None
    commands: Commands
    reason_codes: dict[str, int]
    scenario: Scenario


def commands_section(tally: CommandTally) -> Commands:
    """The report's `commands`, from a run's command counts."""
    return {
        "rate": round(tally.rate, 3),
        "due": tally.due,
        "sent": tally.sent,
        "delivered": tally.delivered,
        "replied": tally.replied,
        "lost": tally.lost,
        "round_trip": latency(tally.round_trip),
        "error": tally.error,
    }


def subscribe_report(
    result: SubscribeResult,
    *,
    options: dict[str, Any],
    fleet_id: str | None,
    endpoint: Endpoint,
    qos: int,
    placement: Sharding | None = None,
    mqtt_version: str = MQTT_311,
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
        placement=placement or Sharding(),
        mqtt_version=mqtt_version,
    )
    trackers = result.trackers
    received = sum(t.received for t in trackers.values())
    member = result.group is not None  # a share of each thing's messages: no loss to count
    window = result.listen_window_s
    series, seconds = report_series(result.series.rows, SUBSCRIBE_WINDOWS)
    histograms: SubscribeHistograms = {
        "connect": text(connections.connect_time.encode()),
        "end_to_end": text(result.latency.encode()),
        "seconds": cast(Any, seconds),
    }
    group: _Group = {} if result.group is None else {"shared_group": result.group}
    return {
        **common,
        "latency_ms": {
            "connect": latency(connections.connect_time),
            "end_to_end": latency(result.latency),
        },
        # Series rows are sampled by name (dataplane.subscriber.SERIES_FIELDS).
        "series": cast(list[SubscribeSecond], series),
        "messages": {
            "qos": qos,
            "received": received,
            "unique": sum(t.unique for t in trackers.values()),
            "lost": 0 if member else sum(t.lost for t in trackers.values()),
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
                "lost": 0 if member else t.lost,
                "duplicates": t.duplicates,
                "out_of_order": t.out_of_order,
                **_sequence_span(t, member=member),
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
        **group,
        "histograms": histograms,
    }


class _Group(TypedDict, total=False):
    """`SubscribeReport.shared_group`, a key only a shared subscription member's has."""

    shared_group: str


class _Span(TypedDict, total=False):
    """`SubscribeThing`'s keys that only a shared subscription member's rows have."""

    first_seq: int
    highest_seq: int


def _sequence_span(tracker: SequenceTracker, *, member: bool) -> _Span:
    """A shared subscription member's first and highest sequence number of a thing: what
    `report merge` needs to count the group's loss (the span less the members' unique)."""
    if not member or tracker.first is None:
        return _Span()
    return {"first_seq": tracker.first, "highest_seq": tracker.highest}


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
