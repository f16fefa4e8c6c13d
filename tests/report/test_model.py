"""The report model (elf_async.report.model): every field described, the README's table generated
from it, and the reports document.py builds have exactly its fields, of its types."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TypedDict, get_args, get_origin, is_typeddict

import pytest
from support.report import assert_conforms, mismatches

import elf_async
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.sender import SERIES_FIELDS, Shared
from elf_async.dataplane.subscriber import SERIES_FIELDS as SUBSCRIBE_SERIES_FIELDS
from elf_async.dataplane.subscriber import SequenceTracker, SubscribeResult, Watch
from elf_async.dataplane.tally import Totals
from elf_async.metrics import Histogram, Series
from elf_async.report.document import (
    ConnectionTally,
    SendTally,
    ThingTally,
    send_report,
    subscribe_report,
)
from elf_async.report.model import (
    RunReport,
    SendReport,
    SubscribeReport,
    fields_of,
    non_null,
    readme_table,
)

README = Path(__file__).parents[2] / "README.md"
CA_PEM = (Path(elf_async.__file__).parent / "data" / "AmazonRootCA.pem").read_text()
ENDPOINT = Endpoint("127.0.0.1", 8883, CA_PEM)


def _readme_report_table() -> str:
    section = README.read_text().split("\n## The report\n", 1)[1].split("\n## ", 1)[0]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_the_readme_table_lists_exactly_the_models_fields() -> None:
    """Regenerate with `python -c 'from elf_async.report.model import readme_table as t;
    print(t())'` and paste it under README.md's "The report"."""
    assert _readme_report_table() == readme_table()


def _parts(hint: Any) -> set[Any]:
    """Every TypedDict a report type is made of."""
    hint = non_null(hint)
    if is_typeddict(hint):
        return {hint}.union(*(_parts(f.type) for f in fields_of(hint)))
    return set().union(*(_parts(arg) for arg in get_args(hint))) if get_origin(hint) else set()


def test_every_field_has_a_one_line_description() -> None:
    parts = set().union(*(_parts(report) for report in (SendReport, SubscribeReport, RunReport)))
    for part in parts:
        for field in fields_of(part):
            text = field.description
            assert text.strip(), (part, field.name)
            assert "\n" not in text, (part, field.name)
            assert "|" not in text, (part, field.name)  # it would split the README's table cell


def test_a_field_without_a_description_is_refused() -> None:
    class Undescribed(TypedDict):
        described: Annotated[int, "a count"]
        bare: int

    with pytest.raises(TypeError, match=r"Undescribed\.bare has no description"):
        fields_of(Undescribed)


def _send_tally(workers: int) -> SendTally:
    shared = Shared()
    for seconds in (0.002, 0.004, 0.010):
        shared.ack.record(seconds)
        shared.ack_from_send.record(seconds)
        shared.lag.record(seconds / 2)
    connections = ConnectionTally(
        attempted=3, succeeded=2, failed=1, things_failed=1, errors=Counter(UNKNOWN_CA=1)
    )
    connections.connect_time.record(0.05)
    things = [
        ThingTally(
            name=f"elf-{i}", index=i, topic=f"elf/elf-{i}", rate=2.0, scheduled=4,
            published=4 if i else 0, acked=4 if i else 0, failed=0, retransmitted=0,
            reconnects=0, error=None if i else "UNKNOWN_CA",
        )
        for i in range(3)
    ]  # fmt: skip
    series = Series(SERIES_FIELDS)  # sampled as the Sender samples it
    series.sample(1.0, Totals.of(things[1:2]).as_dict(), connected=2)
    series.sample(2.0, Totals.of(things).as_dict(), connected=2)
    return SendTally(
        things=things, connections=connections, shared=shared, series=series.rows,
        outcome="completed", started_at=1.7e9, ended_at=1.7e9 + 2.5, publish_window_s=2.0,
        target_per_s=6.0, workers=workers, lost=["worker 2 of 2 exited"] if workers > 1 else [],
    )  # fmt: skip


def _as_written(report: object) -> Any:
    return json.loads(json.dumps(report))


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("workers", [1, 2])
def test_send_reports_have_exactly_the_models_fields(qos: int, workers: int) -> None:
    report = _as_written(
        send_report(
            _send_tally(workers), options={"rate": "2/s"}, fleet_id="f", endpoint=ENDPOINT, qos=qos
        )
    )
    assert_conforms(report, SendReport)
    assert ("workers" in report) == (workers > 1)
    assert (report["messages"]["acked"] is None) == (qos == 0)


def test_subscribe_reports_have_exactly_the_models_fields() -> None:
    connector = Connector(endpoint=ENDPOINT, rate=10, timeout=5, retries=0)
    connector.connect_time.record(0.02)
    seen, gappy = SequenceTracker(), SequenceTracker()
    for seq in (0, 1, 2):
        seen.add(seq)
    for seq in (0, 2, 1, 1, 4):
        gappy.add(seq)
    series = Series(SUBSCRIBE_SERIES_FIELDS)  # sampled as the Subscriber samples it
    series.sample(1, {"received": 3, "lost": 0, "duplicates": 0}, connected=2)
    series.sample(1.7, {"received": 8, "lost": 1, "duplicates": 1})
    latency = Histogram()
    latency.record(0.003)
    watches = [
        Watch(Identity(f"sub-{i}", i, Path("k"), Path("c")), "elf/#", received=4, error=None)
        for i in range(2)
    ]
    result = SubscribeResult(
        watches=watches, trackers={"elf-0": seen, "elf-1": gappy}, unstamped=1,
        connector=connector, latency=latency, series=series, outcome="completed", exit_code=None,
        started_at=1.7e9, ended_at=1.7e9 + 1.7, listen_window_s=1.7,
    )  # fmt: skip
    report = subscribe_report(result, options={}, fleet_id=None, endpoint=ENDPOINT, qos=1)
    assert_conforms(_as_written(report), SubscribeReport)


def test_the_check_names_every_departure_from_the_model() -> None:
    report = _as_written(
        send_report(_send_tally(1), options={}, fleet_id=None, endpoint=ENDPOINT, qos=1)
    )
    del report["messages"]["unsent"]
    report["rate"]["surplus"] = 1
    report["connections"]["failed"] = "1"
    report["things"][0]["published"] = True
    report["latency_ms"]["ack"]["p99"] = None  # nullable: no departure
    assert sorted(mismatches(report, SendReport)) == [
        "report.connections.failed: '1' is not int",
        "report.messages.unsent: missing",
        "report.rate.surplus: not in the model",
        "report.things[0].published: True is not int",
    ]
