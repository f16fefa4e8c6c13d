"""`report compare` as logic (elf_async.report.compare): which way each metric is better, the
limit, and what is not judged."""

from __future__ import annotations

import pytest
from support.report import sent_report

from elf_async.errors import UsageError
from elf_async.report.compare import Change, compare, parse_max_regression, regressions

BASE = [[0.010, 0.012, 0.011], [0.010, 0.013]]


def _labels(changes: list[Change]) -> list[str]:
    return [c.metric.label for c in regressions(changes)]


def test_an_equal_report_does_not_regress() -> None:
    report = sent_report(seconds=BASE)
    changes = compare(report, report, max_regression=0.1)
    assert changes
    assert not regressions(changes)
    assert {c.metric.label for c in changes} >= {"ack p99", "lag p99", "connect p99", "error rate"}


def test_slower_acknowledgements_beyond_the_limit_regress() -> None:
    slower = [[v * 2 for v in second] for second in BASE]
    changes = compare(sent_report(seconds=BASE), sent_report(seconds=slower), max_regression=0.1)
    assert "ack p99" in _labels(changes)
    # Twice as slow is +100%: within a limit of 200%.
    assert "ack p99" not in _labels(
        compare(sent_report(seconds=BASE), sent_report(seconds=slower), max_regression=2.0)
    )


def test_faster_is_never_a_regression_and_lower_rate_is() -> None:
    base, new = sent_report(seconds=BASE), sent_report(seconds=[[v / 2 for v in s] for s in BASE])
    assert not regressions(compare(base, new, max_regression=0.0))
    new["rate"]["achieved_per_s"] = base["rate"]["achieved_per_s"] * 0.5
    assert _labels(compare(base, new, max_regression=0.1)) == ["achieved rate (msg/s)"]


def test_from_zero_any_increase_regresses() -> None:
    base, new = sent_report(seconds=BASE), sent_report(seconds=BASE)
    new["connections"]["reconnects"] = 1
    assert _labels(compare(base, new, max_regression=10.0)) == ["reconnects"]


def test_a_version_1_report_compares_and_missing_data_is_not_judged() -> None:
    base = sent_report(seconds=BASE)
    old = {k: v for k, v in base.items() if k != "histograms"} | {"schema": "elf-async/report/1"}
    new = sent_report(seconds=BASE)
    new["latency_ms"]["ack"]["p99"] = None  # as a QoS 0 send's: nothing acknowledged
    changes = compare(old, new, max_regression=0.1)
    ack = next(c for c in changes if c.metric.label == "ack p99")
    assert ack.new is None
    assert not ack.regressed
    assert ack.row()[3:] == ("-", "not compared")


def test_reports_of_different_commands_are_refused() -> None:
    other = sent_report(seconds=BASE) | {"command": "subscribe"}
    with pytest.raises(UsageError, match="cannot compare a send report with a subscribe report"):
        compare(sent_report(seconds=BASE), other, max_regression=0.1)


@pytest.mark.parametrize(("text", "fraction"), [("10%", 0.1), ("0.25", 0.25), ("0%", 0.0)])
def test_the_limit_is_a_percentage_or_a_fraction(text: str, fraction: float) -> None:
    assert parse_max_regression(text) == pytest.approx(fraction)


@pytest.mark.parametrize("text", ["-5%", "ten", "10%%", ""])
def test_a_bad_limit_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--max-regression"):
        parse_max_regression(text)
