"""k6-style pass/fail thresholds over a send report: parsed once, evaluated after the run.

An expression is ``METRIC OP NUMBER[UNIT]``: ``ack.p99<250ms``, ``error_rate<0.1%``,
``achieved_rate>=99%``, ``connections.failed==0``, ``messages.acked>=1000``. METRIC is the
path of a numeric field of a send or subscribe report (elf_async.report.model: the metrics are
read from it, not listed here) or a shorthand:

- ``connect.P``, ``ack.P``, ``ack_from_send.P``, ``lag.P``, ``end_to_end.P`` for
  ``latency_ms.<name>.P`` (P: p50 p90 p99 p999 max mean count, or k6's ``p(99)``, ``p(99.9)``);
  durations in ms, or with a unit ``ms`` or ``s``;
- ``error_rate``: the fraction of scheduled messages that did not get through (not
  acknowledged at QoS 1, not published at QoS 0), a fraction or a ``%``;
- ``achieved_rate``: ``rate.achieved_per_s / rate.target_per_s``, a fraction or a ``%``.

Metrics are checked against the report model when parsed, so a typo is a usage error before
the run rather than a failed threshold after it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, is_typeddict

from elf_async.errors import UsageError
from elf_async.report.model import (
    LatencySummary,
    SendLatency,
    SendReport,
    SubscribeLatency,
    SubscribeReport,
    ThresholdResult,
    fields_of,
    non_null,
)


def _numeric_paths(part: Any, prefix: str = "") -> Iterator[str]:
    """The dotted paths of a report part's numbers (booleans and lists' rows are not)."""
    for field in fields_of(part):
        hint = non_null(field.type)
        if is_typeddict(hint):
            yield from _numeric_paths(hint, f"{prefix}{field.name}.")
        elif hint in (int, float):
            yield prefix + field.name


# Every numeric field of a send or subscribe report, in the model's order.
REPORT_METRICS = tuple(
    dict.fromkeys(
        path for report in (SendReport, SubscribeReport) for path in _numeric_paths(report)
    )
)
LATENCIES = tuple(
    dict.fromkeys(f.name for part in (SendLatency, SubscribeLatency) for f in fields_of(part))
)
# The statistics of a latency that are durations (ms), not its count.
DURATIONS = tuple(f.name for f in fields_of(LatencySummary) if non_null(f.type) is float)
RATIOS = ("error_rate", "achieved_rate")
KNOWN_METRICS = frozenset(REPORT_METRICS) | frozenset(RATIOS)

_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_EXPRESSION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w.()]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<number>-?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>ms|s|%)?\s*$"
)
_K6_PERCENTILE = re.compile(r"\.p\((\d+(?:\.\d+)?)\)$")
_UNIT_SCALE = {"ms": 1.0, "s": 1000.0, "%": 0.01}


def _available() -> str:
    """What a threshold can check, for the error that names an unknown metric: the shorthands,
    then the report's numeric fields grouped by section."""
    groups: dict[str, list[str]] = {}
    for path in REPORT_METRICS:
        if not path.startswith("latency_ms."):
            head, _, rest = path.rpartition(".")
            groups.setdefault(head, []).append(rest)
    top = groups.pop("", [])
    fields = top + [f"{head}.{'|'.join(names)}" for head, names in groups.items()]
    statistics = [f.name for f in fields_of(LatencySummary)]
    return (
        f"{', '.join(RATIOS)}, a latency NAME.STAT with NAME {'|'.join(LATENCIES)} and STAT "
        f"{'|'.join(statistics)} or p(99.9), or a number of the report: {', '.join(fields)}"
    )


@dataclass(frozen=True, slots=True)
class Threshold:
    """One parsed expression; `limit` is in the metric's own unit (ms, a fraction, a count)."""

    expr: str
    metric: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.limit)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A threshold checked against a report; `value` is None when the report lacks the data."""

    threshold: Threshold
    value: float | None
    ok: bool

    def to_json(self) -> ThresholdResult:
        return {
            "expr": self.threshold.expr,
            "metric": self.threshold.metric,
            "value": self.value,
            "limit": self.threshold.limit,
            "ok": self.ok,
        }

    def describe(self) -> str:
        """``ack.p99<250ms: 12.3 ms (limit < 250 ms) ok`` for the summary and JUnit."""
        t = self.threshold
        shown = "no data" if self.value is None else format_value(t.metric, self.value)
        limit = format_value(t.metric, t.limit)
        return f"{t.expr}: {shown} (limit {t.op} {limit}) {'ok' if self.ok else 'FAILED'}"


def _normalise(metric: str) -> str:
    """Shorthands and k6 spellings to the report path they stand for."""
    k6 = _K6_PERCENTILE.search(metric)
    if k6:
        metric = metric[: k6.start()] + ".p" + k6.group(1).replace(".", "")
    head, _, rest = metric.partition(".")
    if head in LATENCIES and rest:
        return f"latency_ms.{metric}"
    return metric


def parse(expr: str) -> Threshold:
    """Parse one expression; anything wrong is a `UsageError` naming it."""
    match = _EXPRESSION.match(expr)
    if not match:
        raise UsageError(
            f"--threshold {expr!r}: not METRIC OP VALUE (examples: ack.p99<250ms, "
            "error_rate<0.1%, achieved_rate>=99%, connections.failed==0)"
        )
    metric = _normalise(match["metric"])
    if metric not in KNOWN_METRICS:
        raise UsageError(
            f"--threshold {expr!r}: unknown metric {match['metric']!r} (use {_available()})"
        )
    unit = match["unit"]
    if unit in ("ms", "s") and not _is_duration(metric):
        raise UsageError(f"--threshold {expr!r}: {unit} applies to latencies only")
    if unit == "%" and metric not in RATIOS:
        raise UsageError(f"--threshold {expr!r}: % applies to error_rate and achieved_rate only")
    limit = float(match["number"]) * (_UNIT_SCALE[unit] if unit else 1.0)
    return Threshold(expr=expr.strip(), metric=metric, op=match["op"], limit=limit)


# Where latency summaries live: `latency_ms`'s, and the command round trips' (`--commands`).
LATENCY_PARTS = ("latency_ms.", "commands.round_trip.")


def _is_duration(metric: str) -> bool:
    """A latency statistic in ms (a latency's count is not)."""
    return metric.startswith(LATENCY_PARTS) and metric.rpartition(".")[2] in DURATIONS


def parse_all(exprs: Iterable[str]) -> list[Threshold]:
    return [parse(expr) for expr in exprs]


def _lookup(report: Mapping[str, object], path: str) -> float | None:
    node: object = report
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        return None
    return float(node)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def metric_value(report: Mapping[str, object], metric: str) -> float | None:
    """The value of `metric` in `report`, or None when the report cannot tell."""
    if metric == "error_rate":
        scheduled = _lookup(report, "messages.scheduled")
        through = "messages.acked" if _lookup(report, "messages.qos") else "messages.published"
        delivered = _lookup(report, through)
        scenario = report.get("scenario")
        if isinstance(scenario, dict):  # --scenario's groups: each message by its group's QoS
            delivered = sum(g["acked"] if g["qos"] else g["published"] for g in scenario["groups"])
        return _ratio(None if delivered is None else (scheduled or 0) - delivered, scheduled)
    if metric == "achieved_rate":
        return _ratio(_lookup(report, "rate.achieved_per_s"), _lookup(report, "rate.target_per_s"))
    return _lookup(report, metric)


def evaluate(thresholds: Sequence[Threshold], report: Mapping[str, object]) -> list[Verdict]:
    """Check every threshold; missing data fails it (a gate must not pass on nothing)."""
    verdicts = []
    for threshold in thresholds:
        value = metric_value(report, threshold.metric)
        ok = value is not None and threshold.holds(value)
        verdicts.append(Verdict(threshold, value, ok))
    return verdicts


def format_value(metric: str, value: float) -> str:
    if metric in RATIOS:
        return f"{value * 100:.4g}%"
    if _is_duration(metric):
        return f"{value:.4g} ms"
    return f"{value:g}"
