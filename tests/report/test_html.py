"""The HTML page of a report (elf_async.report.html): pure, so read back as text here; a real
browser draws it in test_html_browser.py."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from support.report import assert_conforms
from support.sample_reports import (
    as_v2,
    histogram,
    run_report,
    send_report,
    subscribe_report,
    unsent_run_report,
)

from elf_async.errors import UsageError
from elf_async.report.html import MAX_COLUMNS, judgement, nines, render_compare_html, render_html
from elf_async.report.model import RunReport, SendReport, SubscribeReport, UnsentRunReport
from elf_async.report.reading import parse_report
from elf_async.report.verdict import judge_run, judge_send, judge_subscribe

HOSTILE = '</script><script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


def embedded(page: str, element: str) -> Any:
    """The JSON of the page's <script type="application/json" id=`element`>."""
    match = re.search(rf'<script type="application/json" id="{element}">(.*?)</script>', page)
    assert match is not None
    return json.loads(match[1])


def charts(page: str) -> dict[str, dict[str, Any]]:
    return {chart["title"]: chart for chart in embedded(page, "elf-charts")}


def test_the_sample_reports_conform_to_the_model() -> None:
    """What the tests below feed the page is what the commands write."""
    assert_conforms(send_report(), SendReport)
    assert_conforms(run_report(**{"ack.p99<1ms": False}), RunReport)
    assert_conforms(unsent_run_report(), UnsentRunReport)
    assert_conforms(subscribe_report(), SubscribeReport)


def test_every_string_of_the_report_is_escaped_and_the_json_comes_back_whole() -> None:
    report = send_report(things=2)
    report["things"][0]["name"] = HOSTILE
    report["things"][0]["error"] = HOSTILE
    report["things"][0]["unsent"] = 1
    report["options"]["topic"] = HOSTILE
    report["connections"]["errors"] = {HOSTILE: 1}
    page = render_html(report)
    assert page.count("<script") == 4  # uPlot, our script and two JSON blocks: nothing injected
    assert "<img" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(&quot;x&quot;)" in page  # shown, as text
    assert embedded(page, "elf-report") == report
    strip = charts(page)["Per thing"]
    assert strip["names"][0] == HOSTILE  # for the legend, which sets it as text


def test_the_page_fetches_nothing() -> None:
    """Self-contained: no element loads a URL (uPlot's own banner comment names its home)."""
    for report in (run_report(), subscribe_report(), as_v2(send_report())):
        page = render_html(report)
        loads = re.findall(r"""(?:src|href|action|srcset)\s*=\s*["']?[a-z]*:?//""", page, re.I)
        assert loads == []
        assert re.findall(r"""url\(\s*["']?(?:https?:)?//|@import""", page, re.I) == []
        assert not re.search(r"<(?:link|img|iframe|object|embed)\b", page, re.I)
        assert "uPlot" in page
        assert "u-legend" in page


def test_the_verdict_line_is_the_commands_own() -> None:
    clean = send_report()
    assert judgement(clean).line() == judge_send(clean).line()  # type: ignore[arg-type]
    assert 'class="verdict pass"' in render_html(clean)
    failed = run_report(**{"ack.p99<1ms": False, "error_rate<1%": True})
    line = judgement(failed).line()
    assert line.startswith("run failed: 1 of 2 thresholds failed: ack.p99<1ms: 3 ms")
    page = render_html(failed)
    assert f'<p class="verdict fail">{html.escape(line)}</p>' in page
    subscribed = subscribe_report()
    assert judgement(subscribed).line() == judge_subscribe(subscribed).line()  # type: ignore[arg-type]
    unsent = unsent_run_report()
    assert (
        judgement(unsent).line()
        == judge_run(None, failure="create failed: AccessDenied", thresholds=[]).line()
    )


def test_thresholds_options_endpoint_and_versions_are_tabled() -> None:
    report = run_report(**{"ack.p99<1ms": False, "error_rate<1%": True})
    page = render_html(report)
    assert "<td>ack.p99&lt;1ms</td><td>latency_ms.ack.p99</td><td>3 ms</td><td>1 ms</td>" in page
    assert "<td>FAILED</td>" in page
    assert "<td>ok</td>" in page
    assert "<td>connect.keepalive</td><td>60</td>" in page
    assert "<td>endpoint</td><td>127.0.0.1:8883</td>" in page
    assert "<td>elf-async</td><td>0.1.0</td>" in page
    assert "<td>Python</td>" not in page  # the report does not say: not invented
    report["python"] = "3.11.2"
    assert "<td>Python</td><td>3.11.2</td>" in render_html(report)


def test_one_thing_has_a_column_of_its_own() -> None:
    page = render_html(send_report(things=1))
    strip = charts(page)["Per thing"]
    assert strip["names"] == ["elf-abcd1234-00000"]
    assert strip["data"] == [[0.0], [5.0], [0.0], [0.0]]  # x, published, unsent, failed
    assert strip["note"].startswith("one column per thing")


def test_a_hundred_thousand_things_are_summed_into_columns_and_a_bad_one_shows() -> None:
    report = send_report(things=100_000, seconds=1)
    bad = report["things"][54_321]
    bad |= {"published": 0, "acked": 0, "unsent": 1, "error": "connect: UNKNOWN_CA"}
    page = render_html(report)
    strip = charts(page)["Per thing"]
    x, published, unsent, failed = strip["data"]
    assert len(x) == len(strip["names"]) == MAX_COLUMNS
    assert sum(published) == 99_999
    assert sum(failed) == 0
    assert [n for n, value in enumerate(unsent) if value] == [543]  # things 54,300-54,399
    assert strip["names"][543].startswith("#54300-54399: elf-abcd1234-54300")
    assert "100,000 things: each column sums 100 neighbours (1,000 columns)" in strip["note"]
    assert "Things with problems" in page
    assert "connect: UNKNOWN_CA" in page


def test_a_version_1_report_says_what_it_lacks() -> None:
    page = render_html(send_report())
    assert "Ack and lag latency per second" not in charts(page)
    assert "not in this report (schema v1)" in page
    distribution = charts(page)["Connect latency distribution"]
    assert distribution["note"] == "3 recorded; from the report's p50, p90, p99 and p99.9"
    assert distribution["data"][0] == [round(nines(p), 3) for p in (50, 90, 99, 99.9)]
    assert "End-to-end latency per second" not in charts(render_html(subscribe_report()))


def test_a_version_2_report_draws_its_percentiles_and_histograms() -> None:
    report = as_v2(send_report())
    page = render_html(report)
    assert "not in this report" not in page
    latency = charts(page)["Ack and lag latency per second"]
    assert [s["label"] for s in latency["series"]] == ["ack p50", "ack p99", "lag p50", "lag p99"]
    assert latency["data"][1] == [row["ack_p50_ms"] for row in report["series"]]
    assert latency["data"][1][0] is None  # a second without data is a gap, not a zero
    distribution = charts(page)["Connect latency distribution"]
    assert distribution["note"] == "200 recorded, from the HDR histogram"
    xs, values = distribution["data"]
    expected = histogram(*(0.5 + i * 0.25 for i in range(200)))
    assert values[xs.index(1.0)] == expected.percentile_ms(90.0)
    assert values[xs.index(2.0)] == expected.percentile_ms(99.0)
    assert values == sorted(values)
    sub = charts(render_html(as_v2(subscribe_report())))
    assert sub["End-to-end latency per second"]["data"][2][1:] == [3.0, 4.0, 5.0, 6.0]
    assert sub["End-to-end latency distribution"]["note"].endswith("from the HDR histogram")


def test_subscribe_draws_loss_and_its_sending_things() -> None:
    report = subscribe_report(things=3)
    report["things"][1] |= {"lost": 2, "duplicates": 1, "out_of_order": 4}
    page = render_html(report)
    strip = charts(page)["Per sending thing"]
    assert [s["label"] for s in strip["series"]] == [
        "received",
        "lost",
        "duplicates",
        "out of order",
    ]
    assert strip["data"][1:] == [[5.0, 5.0, 5.0], [0.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 4.0, 0.0]]
    connected = charts(page)["Connected subscribers"]["data"][1]
    assert connected[-1] is None  # the last row has no count: a gap
    assert "<h2>Things with problems</h2>" in page
    assert "Subscribers with problems" not in page
    report["subscribers"][2]["error"] = "connect: refused"
    assert "<h2>Subscribers with problems</h2>" in render_html(report)


def test_a_partial_last_second_joins_the_one_before() -> None:
    """A few messages in the run's last sliver of a second are neither a rate of thousands
    nor a fall to nothing."""
    report = send_report(things=10, seconds=2)
    report["series"].append({**report["series"][-1], "t": 2.05, "published": 1, "scheduled": 1})
    rates = charts(render_html(report))["Messages per second: target and achieved"]
    t, target, due, published = rates["data"]
    assert t == [1.0, 2.05]
    assert target == [10.0, 10.0]
    assert published == due == [10.0, round(11 / 1.05, 3)]


def test_a_run_that_never_sent_has_its_tables_and_no_chart() -> None:
    page = render_html(unsent_run_report())
    assert embedded(page, "elf-charts") == []
    assert "the run stopped before its send phase" in page
    assert "create failed: AccessDenied" in page


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "r.json: not JSON"),
        ("[1, 2]", "r.json: not an elf-async report (it has no schema field)"),
        ('{"schema": "k6/summary"}', "r.json: not an elf-async report (schema 'k6/summary')"),
        ('{"schema": "elf-async/report/9"}', "schema 'elf-async/report/9' is unknown"),
        ('{"schema": "elf-async/report/1", "command": "send"}', "no version, outcome, started_at"),
    ],
)
def test_what_is_not_a_readable_report_is_refused_in_one_line(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=re.escape(fragment)):
        parse_report(text, source="r.json")


def test_versions_1_and_2_are_read() -> None:
    for report in (send_report(), as_v2(subscribe_report())):
        assert parse_report(json.dumps(report), source="r.json") == report


def test_the_compare_page_draws_both_runs_second_by_second() -> None:
    """Base and new share one axis of seconds since each one's start; a second one of them
    lacks is a gap; the table's cells are escaped."""
    base, new = as_v2(send_report(seconds=3)), as_v2(send_report(seconds=5))
    rows = [("ack p99", "1 ms", HOSTILE, "+100.0%", "REGRESSED")]
    page = render_compare_html(base, new, rows=rows, verdict="compare failed", passed=False)
    assert page.count("<script") == 4
    assert "<img" not in page
    assert embedded(page, "elf-report") == {"base": base, "new": new}
    rates = charts(page)["Published messages per second"]
    assert [s["label"] for s in rates["series"]] == ["base", "new"]
    seconds, before, after = rates["data"]
    assert seconds == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert before[3:] == [None, None]
    assert None not in after
    p99 = charts(page)["ack p99 per second"]
    assert p99["data"][2] == [row["ack_p99_ms"] for row in new["series"]]


def test_a_shaped_send_draws_the_planned_devices_and_its_stages() -> None:
    report = send_report(seconds=4)
    for row, stage in zip(report["series"], [0, 0, 1, 1], strict=True):
        row["target_connected"], row["stage"] = 3, stage
    report["stages"] = [
        {"index": 0, "start_s": 1.0, "end_s": 3.0, "devices": [0, 3], "rate": [1.0, 1.0]},
        {"index": 1, "start_s": 3.0, "end_s": 5.0, "devices": [3, 3], "rate": [1.0, 1.0]},
    ]
    report["storm"] = report["churn"] = None
    assert_conforms(report, SendReport)
    chart = charts(render_html(report))["Connected clients: planned by the stages and connected"]
    assert [s["label"] for s in chart["series"]] == ["connected", "planned", "stage"]
    assert chart["data"][3] == [0, 0, 1, 1]
    assert chart["note"] == "stages start at t = 1, 3 s (right axis: the stage running)"
    rates = charts(render_html(report))["Messages per second: target and achieved"]
    assert [s["label"] for s in rates["series"]] == ["due", "published"]  # no flat mean
    assert "Connected clients" in charts(render_html(send_report()))  # a plain send: as before


def test_a_scenario_s_groups_draw_the_planned_devices_and_each_group_s_stages() -> None:
    report = send_report(seconds=4)
    for row in report["series"]:
        row["target_connected"], row["stage"] = 5, None
    report["stages"] = [
        {"index": 0, "start_s": 1.0, "end_s": 3.0, "devices": [0, 3], "rate": [1.0, 1.0],
         "group": "ramp"},
        {"index": 1, "start_s": 3.0, "end_s": 5.0, "devices": [3, 0], "rate": [1.0, 1.0],
         "group": "ramp"},
        {"index": 0, "start_s": 1.0, "end_s": 5.0, "devices": [2, 2], "rate": [2.0, 2.0],
         "group": "steady"},
    ]  # fmt: skip
    report["storm"] = report["churn"] = None
    assert_conforms(report, SendReport)
    title = "Connected clients: planned by the groups' stages and connected"
    chart = charts(render_html(report))[title]
    assert [s["label"] for s in chart["series"]] == ["connected", "planned"]
    assert chart["data"][2] == [5, 5, 5, 5]
    assert chart["note"] == "each group's stages start at t = ramp 1, 3; steady 1 s"
