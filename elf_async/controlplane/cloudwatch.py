"""AWS IoT's own counts of a run, from CloudWatch (`--cloudwatch`): what the broker says it
accepted and throttled, next to what the client counted.

AWS/IoT publishes one-minute sums a minute or two late, for the whole account in the region:
whatever else connected or published in the window counts too. The window is whole minutes
(those data points' resolution) around the run. A metric with no data point in the window is
None, "no data", which is not 0: CloudWatch publishes no point for a minute it saw nothing,
and one it has not published yet looks the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from elf_async.config import Target
from elf_async.controlplane.aws import ControlPlane, connect

NAMESPACE = "AWS/IoT"
PERIOD_S = 60
METRICS = ("Connect.Success", "Connect.Throttle", "PublishIn.Success", "PublishIn.Throttle")
# CloudWatch's GetMetricData takes at most 500 queries per call.
_QUERIES_PER_CALL = 500
# Paced well under CloudWatch's own quotas (GetMetricData 50/s, ListMetrics 25/s).
_API_RATES = {"GetMetricData": 10.0, "ListMetrics": 10.0}


def window(started_at: float, ended_at: float) -> tuple[float, float]:
    """The whole minutes (epoch seconds) that cover a run from `started_at` to `ended_at`."""
    start = started_at // PERIOD_S * PERIOD_S
    end = -(-ended_at // PERIOD_S) * PERIOD_S
    return start, max(end, start + PERIOD_S)


async def iot_sums(target: Target, *, start: float, end: float) -> dict[str, float | None]:
    """Each of `METRICS` summed over [start, end) (epoch seconds on whole minutes), or None
    when CloudWatch has no data point for it there."""
    async with connect(target, concurrency=4, api_rates=_API_RATES, service="cloudwatch") as cw:
        return await sums(cw, start=start, end=end)


async def sums(plane: ControlPlane, *, start: float, end: float) -> dict[str, float | None]:
    """`iot_sums` over an open CloudWatch plane. A metric is a series per combination of
    dimensions (ListMetrics): the one without dimensions, where there is one, is the account's
    total; otherwise the series are added up (AWS IoT splits by Protocol, whose values do not
    overlap)."""
    series: list[tuple[str, list[dict[str, str]]]] = []
    for name in METRICS:
        listed = await _list(plane, name)
        if not listed or [] in listed:
            listed = [[]]  # the account total (or nothing, which the query says)
        series += [(name, dimensions) for dimensions in listed]
    totals: dict[str, float | None] = dict.fromkeys(METRICS)
    for first in range(0, len(series), _QUERIES_PER_CALL):
        part = series[first : first + _QUERIES_PER_CALL]
        for (name, _), values in zip(part, await _data(plane, part, start, end), strict=True):
            if values:
                totals[name] = (totals[name] or 0.0) + sum(values)
    return totals


async def _list(plane: ControlPlane, name: str) -> list[list[dict[str, str]]]:
    """The dimension combinations CloudWatch knows for `name` in AWS/IoT."""
    found: list[list[dict[str, str]]] = []
    token: dict[str, Any] = {}
    while True:
        answer = await plane.call("ListMetrics", Namespace=NAMESPACE, MetricName=name, **token)
        found += [
            [{"Name": d["Name"], "Value": d["Value"]} for d in metric.get("Dimensions", [])]
            for metric in answer.get("Metrics", [])
        ]
        if not answer.get("NextToken"):
            return found
        token = {"NextToken": answer["NextToken"]}


async def _data(
    plane: ControlPlane,
    series: Sequence[tuple[str, list[dict[str, str]]]],
    start: float,
    end: float,
) -> list[list[float]]:
    """Each series' one-minute sums in the window (GetMetricData, every page)."""
    queries: list[dict[str, Any]] = [
        {
            "Id": f"m{index}",
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": dimensions},
                "Period": PERIOD_S,
                "Stat": "Sum",
            },
            "ReturnData": True,
        }
        for index, (name, dimensions) in enumerate(series)
    ]
    values: dict[str, list[float]] = {query["Id"]: [] for query in queries}
    token: dict[str, Any] = {}
    while True:
        answer: Mapping[str, Any] = await plane.call(
            "GetMetricData",
            MetricDataQueries=queries,
            StartTime=_utc(start),
            EndTime=_utc(end),
            **token,
        )
        for result in answer.get("MetricDataResults", []):
            values[result["Id"]] += [float(v) for v in result.get("Values", [])]
        if not answer.get("NextToken"):
            return list(values.values())
        token = {"NextToken": answer["NextToken"]}


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
