"""`report merge` as logic (elf_async.report.merge): shard reports built by the real document
code (support.report.sent_report) merged exactly, and every report that cannot be merged refused
with a line naming it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support.report import assert_conforms, sent_report
from support.sample_reports import as_v2, subscribe_report

from elf_async.dataplane.commands import CommandTally
from elf_async.errors import UsageError
from elf_async.metrics import Histogram
from elf_async.report.document import GroupRow, commands_section, latency, scenario_section, text
from elf_async.report.merge import merge
from elf_async.report.model import SendReport, SubscribeReport
from elf_async.report.verdict import judge_report

# Two shards' ack latencies, second by second (seconds): different enough that an average of
# their percentiles differs from the percentile of the merged histogram.
FAST = [[0.001, 0.002, 0.003], [0.002, 0.004]]
SLOW = [[0.050, 0.120], [0.080, 0.300, 0.400, 0.500]]


def _decoded(text: str) -> Histogram:
    return Histogram.decode(text.encode())


def _values_histogram(values: list[float]) -> Histogram:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    return histogram


def test_counts_sum_and_latencies_come_from_the_merged_histograms() -> None:
    a = sent_report(seconds=FAST, names=("elf-0", "elf-1"), shard=(0, 2))
    b = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert_conforms(merged, SendReport)
    for name in ("scheduled", "published", "acked", "failed", "unsent"):
        assert merged["messages"][name] == a["messages"][name] + b["messages"][name]
    assert merged["fleet"]["things"] == 4
    assert [t["name"] for t in merged["things"]] == ["elf-0", "elf-1", "elf-2", "elf-3"]
    assert merged["shards"] == {"count": 2, "merged": 2, "missing": 0}
    both = Histogram.decode(a["histograms"]["ack"].encode(), b["histograms"]["ack"].encode())
    assert merged["latency_ms"]["ack"] == latency(both)
    assert merged["latency_ms"]["ack"]["count"] == 11
    # Exact, not averaged: the percentiles of all the values recorded.
    every = _values_histogram([v for s in FAST + SLOW for v in s])
    assert merged["latency_ms"]["ack"]["p50"] == every.percentile_ms(50)
    averaged = (a["latency_ms"]["ack"]["p50"] + b["latency_ms"]["ack"]["p50"]) / 2
    assert merged["latency_ms"]["ack"]["p50"] != averaged
    assert judge_report(merged).passed


def test_the_series_merge_by_second_with_percentiles_of_the_merged_second() -> None:
    a = sent_report(seconds=FAST, shard=(0, 2))
    b = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    merged: Any = merge([("a.json", a), ("b.json", b)])
    rows, seconds = merged["series"], merged["histograms"]["seconds"]
    assert [r["t"] for r in rows] == [1, 2]
    for i, row in enumerate(rows):
        assert row["acked"] == a["series"][i]["acked"] + b["series"][i]["acked"]
        values = FAST[i] + SLOW[i]
        assert row["ack_p50_ms"] == _values_histogram(values).percentile_ms(50)
        assert row["ack_p99_ms"] == _values_histogram(values).percentile_ms(99)
        assert _decoded(seconds[i]["ack"]).count == len(values)


def test_a_later_shard_s_rows_land_on_the_seconds_of_absolute_time() -> None:
    a = sent_report(seconds=FAST, started_at=1.7e9, shard=(0, 2))
    b = sent_report(seconds=SLOW, started_at=1.7e9 + 1, names=("elf-2",), shard=(1, 2))
    merged: Any = merge([("b.json", b), ("a.json", a)])
    assert merged["started_at"] == a["started_at"]
    acked = [r["acked"] for r in merged["series"]]
    # a's seconds 1 and 2; b's seconds 1 and 2 are the fleet's seconds 2 and 3.
    assert acked == [3, 2 + 2, 4]
    assert merged["series"][1]["ack_p99_ms"] == _values_histogram(FAST[1] + SLOW[0]).percentile_ms(
        99
    )


def test_a_missing_shard_is_recorded_and_fails_the_verdict() -> None:
    merged: Any = merge([("a.json", sent_report(seconds=FAST, shard=(0, 3)))])
    assert merged["shards"] == {"count": 3, "merged": 1, "missing": 2}
    judgement = judge_report(merged)
    assert not judgement.passed
    assert "2 of 3 shards are missing" in judgement.line()


def test_reports_without_shard_count_one_shard_each() -> None:
    merged: Any = merge(
        [("a.json", sent_report(seconds=FAST)), ("b.json", sent_report(seconds=SLOW))]
    )
    assert merged["shards"] == {"count": 2, "merged": 2, "missing": 0}


def _v1(report: dict[str, Any]) -> dict[str, Any]:
    old = {k: v for k, v in report.items() if k != "histograms"}
    old["schema"] = "elf-async/report/1"
    return old


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(shard={"index": 0, "count": 2}), "shard 0 is also a.json"),
        (lambda r: r.update(command="subscribe"), "a subscribe report, but a.json is a send"),
        (lambda r: r["fleet"].update(fleet_id="other"), "fleet other, but a.json is of fleet f"),
        (lambda r: r["messages"].update(qos=0), "QoS 0, but a.json used QoS 1"),
        (lambda r: r.update(schema="elf-async/report/9"), "is unknown to elf-async"),
        (lambda r: r.pop("schema"), "not an elf-async report"),
        (lambda r: r.update(command="run"), "a run report that never sent"),
        (lambda r: r.update(shard={"index": 2, "count": 2}), "shard 2/2 is not a shard index"),
        (lambda r: r.update(shard={"index": 1, "count": 3}), "a shard of 3, unlike a.json"),
        (lambda r: r.pop("shard"), "b.json: not a shard's report"),
    ],
)
def test_what_cannot_be_merged_is_one_line_naming_the_file(change: Any, message: str) -> None:
    a = sent_report(seconds=FAST, shard=(0, 2))
    b = sent_report(seconds=SLOW, names=("elf-2",), shard=(1, 2))
    change(b)
    with pytest.raises(UsageError, match=r"^b\.json: ") as raised:
        merge([("a.json", a), ("b.json", b)])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_version_1_report_is_refused_it_has_no_histograms() -> None:
    a = sent_report(seconds=FAST)
    with pytest.raises(UsageError, match="elf-async/report/1 has no histograms"):
        merge([("a.json", a), ("b.json", _v1(sent_report(seconds=SLOW)))])


def test_the_encoded_histograms_are_the_hdr_wire_form() -> None:
    report = sent_report(seconds=FAST)
    base64.b64decode(report["histograms"]["ack"], validate=True)
    assert _decoded(report["histograms"]["ack"]).count == 5
    assert report["histograms"]["seconds"][0]["ack"] is not None


def test_the_shards_of_a_shaped_send_merge_with_its_stages_on_the_merged_origin() -> None:
    a = sent_report(seconds=FAST, shard=(0, 2), started_at=1.7e9 + 1)
    b = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    stages = [{"index": 0, "start_s": 1.0, "end_s": 3.0, "devices": [4, 4], "rate": [1.0, 1.0]}]
    for report in (a, b):
        report["stages"] = [dict(stage) for stage in stages]
        for row in report["series"]:
            row["target_connected"], row["stage"] = 2, 0
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert_conforms(merged, SendReport)
    # a's origin is 1 s after the merged one (b's): its stages, on the merged seconds
    assert merged["stages"] == [{**stages[0], "start_s": 2.0, "end_s": 4.0}]
    assert {row["stage"] for row in merged["series"]} == {0}
    assert max(row["target_connected"] for row in merged["series"]) == 4


def _with_commands(report: dict[str, Any], round_trips: list[float], *, sent: int) -> Any:
    """`report` as a `--commands` send writes it: `sent` commands, one reply per round trip."""
    tally = CommandTally(rate=5.0, due=sent, sent=sent, delivered=sent, replied=len(round_trips))
    for value in round_trips:
        tally.round_trip.record(value)
    report["commands"] = commands_section(tally)
    report["histograms"]["commands"] = text(tally.round_trip.encode())
    return report


def test_the_commands_of_shards_sum_and_their_round_trips_merge_exactly() -> None:
    a = _with_commands(sent_report(seconds=FAST, shard=(0, 2)), [0.004, 0.006], sent=2)
    b = _with_commands(
        sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2)), [0.2, 0.3], sent=3
    )
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert_conforms(merged, SendReport)
    commands = merged["commands"]
    assert (commands["rate"], commands["due"], commands["sent"]) == (10.0, 5, 5)
    assert (commands["delivered"], commands["replied"], commands["lost"]) == (5, 4, 1)
    every = _values_histogram([0.004, 0.006, 0.2, 0.3])
    assert commands["round_trip"] == latency(every)
    assert _decoded(merged["histograms"]["commands"]).count == 4
    assert "commands" not in merged["latency_ms"]
    assert "1 of 5 commands got no reply" in judge_report(merged).line()
    plain = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    with pytest.raises(UsageError, match=r"a\.json: sent commands \(--commands\), unlike"):
        merge([("a.json", a), ("b.json", plain)])


def test_mqtt_5_reason_codes_are_summed_most_frequent_first() -> None:
    a = sent_report(seconds=FAST, shard=(0, 2))
    b = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    for report in (a, b):
        report["mqtt_version"] = "5"
    a["reason_codes"] = {"0x87 Not authorized": 2}
    b["reason_codes"] = {"0x97 Quota exceeded": 3, "0x87 Not authorized": 2}
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert merged["mqtt_version"] == "5"
    assert merged["reason_codes"] == {"0x87 Not authorized": 4, "0x97 Quota exceeded": 3}
    assert list(merged["reason_codes"]) == ["0x87 Not authorized", "0x97 Quota exceeded"]


def _member(seqs: dict[str, list[int]]) -> dict[str, Any]:
    """A shared subscription member's report: the sequence numbers it got of each thing."""
    report = as_v2(subscribe_report(things=len(seqs)))
    report["shared_group"] = "g"
    report["histograms"]["seconds"] = [{"end_to_end": None} for _ in report["series"]]
    report["things"] = [
        {
            "name": name, "received": len(got), "unique": len(got), "lost": 0,
            "duplicates": 0, "out_of_order": 0, "first_seq": min(got), "highest_seq": max(got),
        }
        for name, got in seqs.items()
    ]  # fmt: skip
    report["messages"]["received"] = report["messages"]["unique"] = sum(map(len, seqs.values()))
    return report


def test_a_shared_subscription_group_s_members_merge_into_one_row_per_thing() -> None:
    """Member a got the even and b the odd sequence numbers of x; of y, 3 never came."""
    a = _member({"x": [0, 2, 4], "y": [0, 1]})
    b = _member({"x": [1, 3, 5], "y": [2, 4]})
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert_conforms(merged, SubscribeReport)
    rows = {row["name"]: row for row in merged["things"]}
    assert rows["x"] == {
        "name": "x", "received": 6, "unique": 6, "lost": 0, "duplicates": 0,
        "out_of_order": 0, "first_seq": 0, "highest_seq": 5,
    }  # fmt: skip
    assert (rows["y"]["unique"], rows["y"]["lost"]) == (4, 1)
    assert merged["messages"]["lost"] == 1
    assert merged["messages"]["received"] == 10
    assert merged["shared_group"] == "g"


def test_the_scenario_groups_of_the_shards_add_up_by_name() -> None:
    """Each shard holds its slice of every group: the merged group counts every shard's."""
    a = sent_report(seconds=FAST, names=("elf-0", "elf-1"), shard=(0, 2))
    b = sent_report(seconds=SLOW, names=("elf-2", "elf-3"), shard=(1, 2))
    for report, things in ((a, ("elf-0", "elf-1")), (b, ("elf-2", "elf-3"))):
        report["scenario"] = scenario_section(
            report["things"],
            file="s.toml",
            groups=[
                GroupRow("fast", 1, {things[0]}, planned=9, per_thing_per_s=2.0),
                GroupRow("slow", 0, {things[1]}, planned=3, per_thing_per_s=1.0),
            ],
        )
    merged: Any = merge([("a.json", a), ("b.json", b)])
    assert_conforms(merged, SendReport)
    fast, slow = merged["scenario"]["groups"]
    rows = {t["name"]: t for t in merged["things"]}
    assert (fast["name"], fast["things"], fast["planned"]) == ("fast", 2, 18)
    assert fast["acked"] == rows["elf-0"]["acked"] + rows["elf-2"]["acked"]
    assert (slow["things"], slow["planned"], slow["acked"]) == (2, 6, None)
    assert slow["published"] == rows["elf-1"]["published"] + rows["elf-3"]["published"]
    assert merged["scenario"]["file"] == "s.toml"
