"""`send --cloudwatch` against the real moto server's CloudWatch: data points seeded with plain
boto3 in AWS/IoT come back in the report next to the client's counts; without data points the
report says no data (null), never 0."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import boto3
from support.fixtures import Cli, MotoServer
from support.send import load, send

from elf_async.controlplane.cloudwatch import window
from elf_async.local.mosquitto import Mosquitto

MINUTES = range(-10, 11)  # seeded minutes around now: wider than any run here


def seed(moto: MotoServer) -> list[float]:
    """Data points at second 30 of each minute around now (so never on a window's edge):
    Connect.Success 2 (no dimensions), PublishIn.Success 5 for MQTT and 1 for HTTP (two
    series of one metric, which add up). Returns the points' times."""
    cloudwatch = boto3.client(
        "cloudwatch", endpoint_url=moto.url, region_name="us-west-2",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    now = time.time() // 60 * 60
    times = [now + minute * 60 + 30 for minute in MINUTES]
    points: list[dict[str, Any]] = []
    for at in times:
        stamp = dt.datetime.fromtimestamp(at, dt.UTC)
        points += [
            {"MetricName": "Connect.Success", "Timestamp": stamp, "Value": 2.0},
            {"MetricName": "PublishIn.Success", "Timestamp": stamp, "Value": 5.0,
             "Dimensions": [{"Name": "Protocol", "Value": "MQTT"}]},
            {"MetricName": "PublishIn.Success", "Timestamp": stamp, "Value": 1.0,
             "Dimensions": [{"Name": "Protocol", "Value": "HTTP"}]},
        ]  # fmt: skip
    for first in range(0, len(points), 20):
        cloudwatch.put_metric_data(Namespace="AWS/IoT", MetricData=points[first : first + 20])
    return times


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def test_the_report_carries_the_seeded_sums_over_the_runs_minutes(
    fleet: Cli, mosquitto: Mosquitto, moto: MotoServer, tmp_path: Path
) -> None:
    times = seed(moto)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--count", "2", "--cloudwatch", "--cloudwatch-wait", "0s",
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    aws = report["aws_metrics"]
    start, end = _epoch(aws["start"]), _epoch(aws["end"])
    assert (start, end) == window(_epoch(report["started_at"]), _epoch(report["ended_at"]))
    inside = sum(1 for at in times if start <= at < end)
    assert inside >= 1
    assert aws["connect_success"] == {
        "metric": "Connect.Success", "sum": 2.0 * inside,
        "client": report["connections"]["succeeded"],
    }  # fmt: skip
    assert aws["publish_in_success"] == {
        "metric": "PublishIn.Success", "sum": 6.0 * inside, "client": 6,  # 3 things x 2
    }  # fmt: skip
    for name in ("connect_throttle", "publish_in_throttle"):
        assert aws[name]["sum"] is None  # nothing seeded: no data, not 0
        assert aws[name]["client"] is None
    assert aws["error"] is None
    assert aws["waited_s"] == 0
    assert "other clients" in aws["note"]


def test_without_data_points_the_report_says_no_data_not_zero(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--count", "1", "--cloudwatch", "--cloudwatch-wait", "0s",
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    aws = load(report_file)["aws_metrics"]
    metrics = [aws["connect_success"], aws["connect_throttle"], aws["publish_in_success"],
               aws["publish_in_throttle"]]  # fmt: skip
    assert [m["sum"] for m in metrics] == [None] * 4
    assert metrics[0]["client"] == 3
    assert "null is no data" in aws["note"]
