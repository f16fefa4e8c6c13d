"""`report merge`: the reports of a fleet's shards as one report, exactly. Pure logic.

Counts are summed; latencies come from the shards' HDR histograms (`histograms`) merged, never
from their percentiles; the series are merged by second on absolute time (a shard's row at
`t` is at its `started_at + t`; the merged origin is the earliest start), each second's
percentiles computed again from the merged per-second histograms; the per-thing rows are
concatenated in shard order. `shards` records how many shards were expected (the reports'
`shard.count`; without `shard`, each file is one shard), merged and missing: a missing shard
fails the merged report's verdict (elf_async.report.verdict). What cannot be merged (a report
of another command, fleet or QoS, a shard given twice, a version 1 report, which has no
histograms) is a `UsageError` naming the file.

The merged rate is the published messages over the longest shard's publishing window (shards
that start together, as `--start-at` makes them, publish over the same window); a subscribe's
is the sum of the shards' rates (their listeners ran side by side).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from elf_async.errors import UsageError
from elf_async.metrics import Histogram, merge_series
from elf_async.report.document import (
    SEND_WINDOWS,
    SUBSCRIBE_WINDOWS,
    iso,
    latency,
    report_series,
    text,
    windowed_series,
)
from elf_async.report.model import (
    SCHEMA,
    Commands,
    Connections,
    SendReport,
    Shards,
    SubscribeReport,
)
from elf_async.report.reading import check_report

MERGEABLE = ("send", "subscribe")
COMMANDS = "commands"  # a `--commands` send's section, and its round-trip histogram


@dataclass(frozen=True, slots=True)
class Shard:
    """One report to merge: `name` (its file) says which in an error."""

    name: str
    report: Mapping[str, Any]
    index: int
    started_at: float  # epoch seconds


def merge(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> SendReport | SubscribeReport:
    """The reports (file name, parsed JSON) of one fleet's shards as one report."""
    shards, count = _shards(reports)
    first = shards[0].report
    command = first["command"]
    origin = min(s.started_at for s in shards)
    ended = max(_epoch(s.name, s.report["ended_at"]) for s in shards)
    outcomes = [s.report["outcome"] for s in shards if s.report["outcome"] != "completed"]
    histograms = {
        name: Histogram.decode(*(s.report["histograms"][name].encode() for s in shards))
        for name in first["histograms"]
        if name not in ("seconds", COMMANDS)
    }
    windows = SEND_WINDOWS if command == "send" else SUBSCRIBE_WINDOWS
    series, seconds = report_series(
        merge_series(
            windowed_series(
                s.report["series"],
                s.report["histograms"]["seconds"],
                windows,
                shift=s.started_at - origin,
            )
            for s in shards
        ),
        windows,
    )
    common: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command,
        "version": first["version"],
        "outcome": outcomes[0] if outcomes else "completed",
        "started_at": iso(origin),
        "ended_at": iso(ended),
        "duration_s": round(ended - origin, 3),
        "options": first["options"],
        "fleet": {
            "fleet_id": first["fleet"]["fleet_id"],
            "things": sum(s.report["fleet"]["things"] for s in shards),
        },
        "endpoint": first["endpoint"],
        **({"mqtt_version": first["mqtt_version"]} if "mqtt_version" in first else {}),
        **({"transport": first["transport"]} if "transport" in first else {}),
        "connections": _connections([s.report["connections"] for s in shards]),
        "shards": Shards(count=count, merged=len(shards), missing=count - len(shards)),
        "latency_ms": {name: latency(h) for name, h in histograms.items()},
        "series": series,
    }
    encoded: dict[str, Any] = {name: text(h.encode()) for name, h in histograms.items()}
    encoded["seconds"] = seconds
    parts = [s.report for s in shards]
    if "stages" in first:  # one shape for every shard: its boundaries on the merged origin
        shift = shards[0].started_at - origin
        common["stages"] = [
            {**stage, "start_s": round(stage["start_s"] + shift, 3),
             "end_s": round(stage["end_s"] + shift, 3)}
            for stage in first["stages"]
        ]  # fmt: skip
    if command == "send":
        sent = _send_parts(parts)
        if COMMANDS in first:
            sent[COMMANDS], encoded[COMMANDS] = _commands(shards)
        return cast(SendReport, {**common, **sent, "histograms": encoded})
    return cast(SubscribeReport, {**common, **_subscribe_parts(parts), "histograms": encoded})


def _shards(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[list[Shard], int]:
    """The reports checked to be shards of one fleet's one command, in shard order, and the
    number of shards expected."""
    if not reports:
        raise UsageError("no report to merge")
    checked = [(name, check_report(data, source=name)) for name, data in reports]
    first_name, first = checked[0]
    with_shard = [name for name, report in checked if "shard" in report]
    if with_shard and len(with_shard) != len(checked):
        without = next(name for name, report in checked if "shard" not in report)
        raise UsageError(
            f"{without}: not a shard's report (no `shard`), unlike {with_shard[0]}: merge the "
            "shards of one sharded run"
        )
    shards: list[Shard] = []
    counts: set[int] = set()
    for position, (name, report) in enumerate(checked):
        _same(name, report, first_name, first)
        index, count = _shard_of(name, report, position, len(checked))
        counts.add(count)
        if len(counts) > 1:
            raise UsageError(f"{name}: a shard of {count}, unlike {first_name}: mixed fleets")
        taken = next((s.name for s in shards if s.index == index), None)
        if taken is not None:
            raise UsageError(f"{name}: shard {index} is also {taken}: give each shard once")
        shards.append(Shard(name, report, index, _epoch(name, report["started_at"])))
    return sorted(shards, key=lambda s: s.index), counts.pop()


def _same(name: str, report: Mapping[str, Any], first_name: str, first: Mapping[str, Any]) -> None:
    """`report` can be merged with `first`: a version 2 report of the same command, fleet and
    QoS."""
    command = report.get("command")
    if command not in MERGEABLE:
        raise UsageError(f"{name}: a {command} report that never sent: nothing to merge")
    if "histograms" not in report:
        raise UsageError(
            f"{name}: {report['schema']} has no histograms to merge exactly (report merge "
            f"needs {SCHEMA} reports)"
        )
    if command != first["command"]:
        raise UsageError(f"{name}: a {command} report, but {first_name} is a {first['command']}")
    fleet, first_fleet = report["fleet"]["fleet_id"], first["fleet"]["fleet_id"]
    if fleet != first_fleet:
        raise UsageError(f"{name}: fleet {fleet}, but {first_name} is of fleet {first_fleet}")
    qos, first_qos = report["messages"]["qos"], first["messages"]["qos"]
    if qos != first_qos:
        raise UsageError(f"{name}: QoS {qos}, but {first_name} used QoS {first_qos}")
    if (COMMANDS in report) != (COMMANDS in first):
        with_commands = name if COMMANDS in report else first_name
        raise UsageError(f"{with_commands}: sent commands (--commands), unlike the other reports")


def _shard_of(name: str, report: Mapping[str, Any], position: int, files: int) -> tuple[int, int]:
    """(index, count) from the report's `shard`; without one, the file's position of `files`."""
    shard = report.get("shard")
    if shard is None:
        return position, files
    index, count = shard.get("index"), shard.get("count")
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise UsageError(f"{name}: shard {index}/{count} is not a shard index below its count")
    return index, count


def _epoch(name: str, stamp: object) -> float:
    try:
        return dt.datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        raise UsageError(f"{name}: {stamp!r} is not an ISO 8601 time") from None


def _connections(parts: Sequence[Mapping[str, Any]]) -> Connections:
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    summed = {name: sum(p[name] for p in parts) for name in parts[0] if name != "errors"}
    return cast(Connections, {**summed, "errors": dict(errors.most_common())})


def _messages(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts summed (a null `acked`, at QoS 0, stays null); the QoS as it was."""
    qos = parts[0]["messages"]["qos"]
    names = parts[0]["messages"]
    summed = {name: sum(p["messages"][name] or 0 for p in parts) for name in names}
    if summed.get("acked") is not None and not qos:
        summed["acked"] = None
    return {**summed, "qos": qos}


def _send_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    messages = _messages(parts)
    window = max(p["rate"]["publish_window_s"] for p in parts)
    merged: dict[str, Any] = {
        "messages": messages,
        "rate": {
            "target_per_s": round(sum(p["rate"]["target_per_s"] for p in parts), 3),
            "per_thing_per_s": parts[0]["rate"]["per_thing_per_s"],
            "achieved_per_s": round(messages["published"] / window, 3) if window > 0 else None,
            "publish_window_s": window,
        },
        "things": [row for p in parts for row in p["things"]],
    }
    reasons = [p["reason_codes"] for p in parts if "reason_codes" in p]
    if reasons:
        merged["reason_codes"] = dict(sum(map(Counter, reasons), Counter()).most_common())
    scenarios = [p["scenario"] for p in parts if "scenario" in p]
    if scenarios:
        merged["scenario"] = _scenario(scenarios)
    workers = [p["workers"] for p in parts if "workers" in p]
    if workers:
        merged["workers"] = {
            "count": sum(w["count"] for w in workers) + len(parts) - len(workers),
            "lost": [line for w in workers for line in w["lost"]],
        }
    return merged


def _commands(shards: Sequence[Shard]) -> tuple[Commands, str]:
    """The shards' command counts summed, their round trips from the merged histograms."""
    parts = [s.report[COMMANDS] for s in shards]
    round_trip = Histogram.decode(*(s.report["histograms"][COMMANDS].encode() for s in shards))
    errors = [p["error"] for p in parts if p["error"]]

    def total(name: str) -> int:
        return sum(int(p[name]) for p in parts)

    merged: Commands = {
        "rate": round(sum(p["rate"] for p in parts), 3),
        "due": total("due"),
        "sent": total("sent"),
        "delivered": total("delivered"),
        "replied": total("replied"),
        "lost": total("lost"),
        "round_trip": latency(round_trip),
        "error": "; ".join(errors) or None,
    }
    return merged, text(round_trip.encode())


def _scenario(scenarios: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The shards' `scenario` as one: each group's things and counts summed by name, in the
    file's order (every shard holds its slice of every group)."""
    summed = ("things", "planned", "scheduled", "published", "failed", "unsent")
    groups: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        for row in scenario["groups"]:
            group = groups.get(row["name"])
            if group is None:
                groups[row["name"]] = dict(row)
                continue
            for name in summed:
                group[name] += row[name]
            if group["acked"] is not None:
                group["acked"] += row["acked"]
            if group["per_thing_per_s"] is None:
                group["per_thing_per_s"] = row["per_thing_per_s"]
    return {"file": scenarios[0]["file"], "groups": list(groups.values())}


def _subscribe_parts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rates = [p["rate"]["achieved_per_s"] for p in parts if p["rate"]["achieved_per_s"] is not None]
    messages = _messages(parts)
    things = [row for p in parts for row in p["things"]]
    groups = {p["shared_group"] for p in parts if "shared_group" in p}
    if groups:  # members of a shared subscription: each saw a share of every thing's messages
        things = _group_things(things)
        messages["lost"] = sum(row["lost"] for row in things)
    return {
        "messages": messages,
        "rate": {"achieved_per_s": round(sum(rates), 3) if rates else None},
        "things": things,
        "subscribers": [row for p in parts for row in p["subscribers"]],
        **({"shared_group": ",".join(sorted(groups))} if groups else {}),
    }


def _group_things(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a shared subscription group's members, one per thing: counts summed, the
    sequence span from the first to the highest any member saw, and the loss in it (the span
    less the unique messages of all members; a message two members both got counts twice)."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = merged.get(row["name"])
        if into is None:
            merged[row["name"]] = dict(row)
            continue
        for name in ("received", "unique", "duplicates", "out_of_order"):
            into[name] += row[name]
        if "first_seq" in row:
            into["first_seq"] = min(into.get("first_seq", row["first_seq"]), row["first_seq"])
            into["highest_seq"] = max(into.get("highest_seq", -1), row["highest_seq"])
    for row in merged.values():
        if "first_seq" in row:
            span = row["highest_seq"] - row["first_seq"] + 1
            row["lost"] = max(0, span - row["unique"])
    return [merged[name] for name in sorted(merged)]
