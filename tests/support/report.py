"""Reports against their model (elf_async.report.model): the JSON a command wrote has exactly the
fields the model declares, each of the declared type."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, is_typeddict

from elf_async.dataplane.connections import Endpoint
from elf_async.dataplane.sender import SERIES_FIELDS, SERIES_WINDOWS, Shared
from elf_async.metrics import Series
from elf_async.report.document import ConnectionTally, SendTally, ThingTally, send_report
from elf_async.report.model import fields_of, non_null

_SCALARS = (str, int, float, bool)


def mismatches(value: object, hint: Any, path: str = "report") -> list[str]:
    """Where `value` (parsed JSON) departs from the model type `hint`, one line each."""
    if hint is Any:
        return []
    if non_null(hint) is not hint:  # T | None
        if value is None:
            return []
        hint = non_null(hint)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        fields = {f.name: f for f in fields_of(hint)}
        found = [f"{path}.{name}: not in the model" for name in value if name not in fields]
        for name, field in fields.items():
            if name in value:
                found += mismatches(value[name], field.type, f"{path}.{name}")
            elif field.required:
                found.append(f"{path}.{name}: missing")
        return found
    origin = get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        (item,) = get_args(hint)
        return [line for i, v in enumerate(value) for line in mismatches(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        _, item = get_args(hint)
        return [line for k, v in value.items() for line in mismatches(v, item, f"{path}.{k}")]
    if hint not in _SCALARS:
        raise TypeError(f"{path}: the model uses {hint!r}, which this check does not know")
    # JSON has one kind of number: an int is a valid float, a bool is not an int.
    ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    return [] if ok else [f"{path}: {value!r} is not {hint.__name__}"]


def assert_conforms(report: object, model: Any) -> None:
    found = mismatches(report, model)
    assert not found, "the report departs from its model:\n" + "\n".join(found)


def sent_report(
    *,
    seconds: Sequence[Sequence[float]],
    started_at: float = 1.7e9,
    names: Sequence[str] = ("elf-0", "elf-1"),
    fleet_id: str | None = "f",
    qos: int = 1,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A send report as `send` writes it (document.py, as JSON), without a broker: second i of
    the series acknowledges (and publishes) the messages whose ack latencies, in seconds, are
    `seconds[i]`, recorded and sampled as the Sender records and samples them. `shard` (index,
    count) adds the `shard` field a sharded run writes."""
    shared = Shared()
    series = Series(SERIES_FIELDS)
    sent = 0
    for second, latencies in enumerate(seconds, start=1):
        for value in latencies:
            shared.ack.record(value)
            shared.ack_from_send.record(value / 2)
            shared.lag.record(value / 4)
        sent += len(latencies)
        counts = {"scheduled": sent, "published": sent, "acked": sent}
        windows = {name: getattr(shared, name).take_second() for name in SERIES_WINDOWS}
        series.sample(second, counts, connected=len(names), **windows)
    per_thing = [sent // len(names) + (i < sent % len(names)) for i in range(len(names))]
    connections = ConnectionTally(attempted=len(names), succeeded=len(names))
    connections.connect_time.record(0.01)
    tally = SendTally(
        things=[
            ThingTally(
                name=name, index=i, topic=f"elf/{name}", rate=1.0, scheduled=count,
                published=count, acked=count, failed=0, retransmitted=0, reconnects=0, error=None,
            )
            for i, (name, count) in enumerate(zip(names, per_thing, strict=True))
        ],
        connections=connections, shared=shared, series=series.rows, outcome="completed",
        started_at=started_at, ended_at=started_at + len(seconds), publish_window_s=len(seconds),
        target_per_s=float(len(names)),
    )  # fmt: skip
    endpoint = Endpoint("127.0.0.1", 8883, "")
    report = send_report(tally, options={}, fleet_id=fleet_id, endpoint=endpoint, qos=qos)
    written: dict[str, Any] = json.loads(json.dumps(report))
    if shard is not None:
        written["shard"] = {"index": shard[0], "count": shard[1]}
    return written


def embedded_report(page: Path) -> Any:
    """The report an HTML page (`--html`) embeds."""
    match = re.search(
        r'<script type="application/json" id="elf-report">(.*?)</script>', page.read_text()
    )
    assert match is not None
    return json.loads(match[1])
