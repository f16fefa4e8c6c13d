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
  reconnects, error}].
`subscribe` adds:
  messages {qos, received, unique, lost, duplicates, out_of_order, unstamped},
  rate {achieved_per_s}, latency_ms {connect, end_to_end (receive time - the message's ts)},
  things [{name, received, unique, lost, duplicates, out_of_order}] per sending thing,
  subscribers [{name, topic, received, reconnects, error}].
Counts are exact: `acked` <= `published` <= `scheduled`; `unsent` = scheduled - published.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

from elf_async import __version__
from elf_async.certs import write_public
from elf_async.connections import Connector, Endpoint
from elf_async.errors import UsageError
from elf_async.sender import SendResult
from elf_async.subscriber import SubscribeResult

SCHEMA = "elf-async/report/1"


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
    connector: Connector,
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
            "attempted": connector.attempted,
            "succeeded": connector.succeeded,
            "failed": connector.failed,
            "reconnects": connector.reconnects,
            "things_failed": connector.things_failed,
            "errors": dict(Counter(connector.errors).most_common()),
        },
        "latency_ms": {"connect": connector.connect_time.summary_ms()},
        "series": series,
    }


def send_report(
    result: SendResult,
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
        things=len(result.publishers),
        endpoint=endpoint,
        connector=result.connector,
        series=result.series.rows,
    )
    totals = result.totals()
    window = result.publish_window_s
    per_thing = [p.schedule.rate for p in result.publishers]
    report["messages"] = {
        "qos": qos,
        "scheduled": totals["scheduled"],
        "published": totals["published"],
        "acked": totals["acked"] if qos else None,
        "failed": totals["failed"],
        "unsent": totals["scheduled"] - totals["published"],
        "retransmitted": totals["retransmitted"],
    }
    report["rate"] = {
        "target_per_s": round(result.target_per_s, 3),
        "per_thing_per_s": round(per_thing[0], 3) if per_thing else None,
        "achieved_per_s": round(totals["published"] / window, 3) if window > 0 else None,
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
            "name": p.thing.name,
            "topic": p.topic,
            "scheduled": p.scheduled,
            "published": p.published,
            "acked": p.acked if qos else None,
            "failed": p.failed,
            "unsent": p.scheduled - p.published,
            "reconnects": p.reconnects,
            "error": p.error,
        }
        for p in result.publishers
    ]
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
        connector=result.connector,
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
