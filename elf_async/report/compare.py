"""`report compare`: a new run's key metrics against a base run's, for CI to gate on. Pure logic.

Each metric knows which way is better. A metric regresses when it moves the wrong way by more
than the allowed fraction of the base value; from a base of zero (no error, no reconnect), any
move the wrong way is a regression. A metric either report lacks (a version 1 report reads the
same; a QoS 0 send has no ack latency) is shown and not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elf_async.errors import UsageError
from elf_async.report.thresholds import metric_value
from elf_async.report.verdict import milliseconds, number

DEFAULT_MAX_REGRESSION = "10%"
_FRACTION = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<percent>%)?\s*$")


@dataclass(frozen=True, slots=True)
class Metric:
    label: str
    path: str  # as `thresholds.metric_value` reads it
    higher_is_better: bool
    show: Callable[[float], str]


def _ms(value: float) -> str:
    return milliseconds(value)


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


METRICS: tuple[Metric, ...] = (
    Metric("achieved rate (msg/s)", "rate.achieved_per_s", True, number),
    Metric("ack p50", "latency_ms.ack.p50", False, _ms),
    Metric("ack p99", "latency_ms.ack.p99", False, _ms),
    Metric("ack p999", "latency_ms.ack.p999", False, _ms),
    Metric("lag p99", "latency_ms.lag.p99", False, _ms),
    Metric("end-to-end p99", "latency_ms.end_to_end.p99", False, _ms),
    Metric("connect p99", "latency_ms.connect.p99", False, _ms),
    Metric("error rate", "error_rate", False, _percent),
    Metric("reconnects", "connections.reconnects", False, number),
)


@dataclass(frozen=True, slots=True)
class Change:
    """One metric in both reports; `change` is the relative move (None: not judged)."""

    metric: Metric
    base: float | None
    new: float | None
    regressed: bool

    @property
    def change(self) -> float | None:
        if self.base is None or self.new is None or self.base == 0:
            return None
        return (self.new - self.base) / self.base

    def row(self) -> tuple[str, str, str, str, str]:
        """label, base, new, delta, verdict, for the printed table."""

        def shown(value: float | None) -> str:
            return "-" if value is None else self.metric.show(value)

        if self.base is None or self.new is None:
            delta, verdict = "-", "not compared"
        else:
            change = self.change
            delta = (
                f"{change * 100:+.1f}%"
                if change is not None
                else (
                    "0" if self.new == self.base else f"+{self.metric.show(self.new - self.base)}"
                )
            )
            verdict = "REGRESSED" if self.regressed else "ok"
        return self.metric.label, shown(self.base), shown(self.new), delta, verdict


def parse_max_regression(text: str) -> float:
    """``10%`` or ``0.1``: the fraction of the base value a metric may worsen by."""
    match = _FRACTION.match(text)
    if not match:
        raise UsageError(f"--max-regression {text!r}: not a percentage (10%) or a fraction (0.1)")
    value = float(match["number"])
    return value / 100 if match["percent"] else value


def compare(
    base: Mapping[str, Any], new: Mapping[str, Any], *, max_regression: float
) -> list[Change]:
    """Every metric either report has, base against new."""
    if base.get("command") != new.get("command"):
        raise UsageError(
            f"cannot compare a {base.get('command')} report with a {new.get('command')} report"
        )
    changes = []
    for metric in METRICS:
        before, after = metric_value(base, metric.path), metric_value(new, metric.path)
        if before is None and after is None:
            continue
        changes.append(
            Change(metric, before, after, _regressed(metric, before, after, max_regression))
        )
    return changes


def _regressed(metric: Metric, base: float | None, new: float | None, limit: float) -> bool:
    if base is None or new is None:
        return False
    worse = base - new if metric.higher_is_better else new - base
    if worse <= 0:
        return False
    return base == 0 or worse / abs(base) > limit


def regressions(changes: Sequence[Change]) -> list[Change]:
    return [c for c in changes if c.regressed]
