"""Thresholds: parsing (units, shorthands, bad input) and evaluation against a report."""

from __future__ import annotations

from typing import Any

import pytest

from elf_async.errors import UsageError
from elf_async.report.thresholds import KNOWN_METRICS, REPORT_METRICS, evaluate, parse, parse_all

REPORT: dict[str, Any] = {
    "schema": "elf-async/report/1",
    "messages": {"qos": 1, "scheduled": 1000, "published": 1000, "acked": 999, "failed": 1},
    "connections": {"attempted": 10, "succeeded": 10, "failed": 0, "reconnects": 0},
    "rate": {"target_per_s": 100.0, "achieved_per_s": 99.5},
    "latency_ms": {
        name: {"p50": 2.0, "p90": 5.0, "p99": 12.5, "p999": 40.0, "max": 80.0}
        for name in ("connect", "ack", "lag")
    },
}


@pytest.mark.parametrize(
    ("expr", "metric", "op", "limit"),
    [
        ("ack.p99<250ms", "latency_ms.ack.p99", "<", 250.0),
        ("ack.p99 < 0.25s", "latency_ms.ack.p99", "<", 250.0),
        ("connect.p(99.9)<=1s", "latency_ms.connect.p999", "<=", 1000.0),
        ("lag.max<100", "latency_ms.lag.max", "<", 100.0),
        ("latency_ms.ack.p99<250", "latency_ms.ack.p99", "<", 250.0),
        ("error_rate<0.1%", "error_rate", "<", 0.001),
        ("error_rate<0.001", "error_rate", "<", 0.001),
        ("achieved_rate>=99%", "achieved_rate", ">=", 0.99),
        ("connections.failed==0", "connections.failed", "==", 0.0),
        ("messages.acked>=1000", "messages.acked", ">=", 1000.0),
        ("rate.achieved_per_s!=0", "rate.achieved_per_s", "!=", 0.0),
        ("messages.failed>.5", "messages.failed", ">", 0.5),
    ],
)
def test_parse(expr: str, metric: str, op: str, limit: float) -> None:
    threshold = parse(expr)
    assert (threshold.metric, threshold.op) == (metric, op)
    assert threshold.limit == pytest.approx(limit)
    assert threshold.expr == expr.strip()


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("ack.p99", "not METRIC OP VALUE"),
        ("ack.p99<<250", "not METRIC OP VALUE"),
        ("ack.p99<fast", "not METRIC OP VALUE"),
        ("ack.p95<250ms", "unknown metric"),
        ("messages.gone==0", "unknown metric"),
        ("messages<1", "unknown metric"),
        ("connections.failed<1ms", "latencies only"),
        ("ack.p99<1%", "error_rate and achieved_rate only"),
        ("error_rate<1s", "latencies only"),
    ],
)
def test_bad_expressions_are_usage_errors_naming_them(expr: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(expr)
    assert repr(expr) in str(caught.value)
    assert fragment in str(caught.value)


def test_evaluate_values_and_verdicts() -> None:
    verdicts = evaluate(
        parse_all(
            [
                "ack.p99<250ms",
                "ack.p99<10ms",
                "error_rate<0.1%",
                "error_rate<=0.1%",
                "achieved_rate>=99%",
                "connections.failed==0",
                "messages.acked>=1000",
            ]
        ),
        REPORT,
    )
    assert [v.ok for v in verdicts] == [True, False, False, True, True, True, False]
    assert [v.value for v in verdicts][:2] == [12.5, 12.5]
    assert verdicts[2].value == pytest.approx(0.001)
    assert verdicts[4].value == pytest.approx(0.995)
    assert verdicts[0].to_json() == {
        "expr": "ack.p99<250ms",
        "metric": "latency_ms.ack.p99",
        "value": 12.5,
        "limit": 250.0,
        "ok": True,
    }
    assert verdicts[1].describe() == "ack.p99<10ms: 12.5 ms (limit < 10 ms) FAILED"
    assert verdicts[2].describe() == "error_rate<0.1%: 0.1% (limit < 0.1%) FAILED"


def test_error_rate_counts_what_did_not_get_through() -> None:
    qos0 = {"messages": {"qos": 0, "scheduled": 200, "published": 150, "acked": 0}}
    (verdict,) = evaluate(parse_all(["error_rate<30%"]), qos0)
    assert (verdict.value, verdict.ok) == (pytest.approx(0.25), True)
    qos1 = {"messages": {"qos": 1, "scheduled": 200, "published": 200, "acked": 100}}
    (verdict,) = evaluate(parse_all(["error_rate<30%"]), qos1)
    assert (verdict.value, verdict.ok) == (pytest.approx(0.5), False)


def test_error_rate_of_a_scenario_counts_each_group_by_its_qos() -> None:
    """QoS 1 groups by their acknowledgements, QoS 0 groups by what they published."""
    mixed = {
        "messages": {"qos": 1, "scheduled": 300, "published": 290, "acked": 190},
        "scenario": {"file": "s.toml", "groups": [
            {"qos": 1, "scheduled": 200, "published": 200, "acked": 190},
            {"qos": 0, "scheduled": 100, "published": 90, "acked": None},
        ]},
    }  # fmt: skip
    (verdict,) = evaluate(parse_all(["error_rate<10%"]), mixed)
    assert (verdict.value, verdict.ok) == (pytest.approx(20 / 300), True)


def test_missing_data_fails_the_threshold() -> None:
    empty: dict[str, Any] = {"messages": {"scheduled": 0, "failed": 0}, "rate": {}}
    verdicts = evaluate(parse_all(["error_rate<1%", "achieved_rate>=99%", "ack.p99<1s"]), empty)
    assert [(v.value, v.ok) for v in verdicts] == [(None, False)] * 3
    assert "no data" in verdicts[2].describe()


def test_the_metrics_are_the_numbers_of_the_report_model() -> None:
    """Read from elf_async.report.model: numbers at any depth outside lists, not booleans,
    strings, maps of reasons or run's own sections (thresholds judge the send phase)."""
    for metric in (
        "messages.acked", "messages.received", "connections.things_failed", "rate.per_thing_per_s",
        "latency_ms.ack.p99", "latency_ms.end_to_end.count", "workers.count", "duration_s",
    ):  # fmt: skip
        assert metric in REPORT_METRICS
        assert parse(f"{metric}>=0").metric == metric
    for path in ("endpoint.alpn", "connections.errors", "things", "schema", "run.exit_code"):
        assert path not in KNOWN_METRICS


def test_an_unknown_metric_lists_what_is_available() -> None:
    with pytest.raises(UsageError) as caught:
        parse("messages.gone==0")
    message = str(caught.value)
    assert "\n" not in message
    assert "connect|ack|ack_from_send|lag|end_to_end" in message
    assert "count|p50|p90|p99|p999|max|mean" in message
    assert (
        "connections.attempted|succeeded|failed|reconnects|reconnect_attempts|takeovers|things_failed"
        in message
    )
    for metric in REPORT_METRICS:
        assert metric.rpartition(".")[2] in message, metric


def test_a_latency_count_is_a_number_not_a_duration() -> None:
    assert parse("ack.count>=100").metric == "latency_ms.ack.count"
    with pytest.raises(UsageError, match="latencies only"):
        parse("ack.count>=100ms")
    (verdict,) = evaluate(parse_all(["ack.count>=100"]), {"latency_ms": {"ack": {"count": 120}}})
    assert verdict.describe() == "ack.count>=100: 120 (limit >= 100) ok"


def test_command_round_trips_and_counts_are_metrics() -> None:
    report = {"commands": {"lost": 0, "round_trip": {"count": 30, "p99": 4.5}}}
    verdicts = evaluate(
        parse_all(["commands.round_trip.p99<10ms", "commands.lost==0", "commands.replied>=1"]),
        report,
    )
    assert [v.ok for v in verdicts] == [True, True, False]  # no `replied`: no data, failed
    assert verdicts[0].describe() == "commands.round_trip.p99<10ms: 4.5 ms (limit < 10 ms) ok"
    with pytest.raises(UsageError, match="latencies only"):
        parse("commands.round_trip.count>=1ms")
