"""`send --stages`, `--storm`, `--churn` against a real mosquitto with mutual TLS: the per-second
series against the pure planner (elf_async.dataplane.shape), an independent subscriber's
counts against the report's, the broker's log for every reconnect."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA, Observer
from support.send import created, load, send

from elf_async.dataplane.shape import Shape, parse_stages
from elf_async.local.mosquitto import Mosquitto


@pytest.fixture
def fleet40(cli: Cli, test_ca: FixtureCA) -> Cli:
    return created(cli, test_ca, 40)


def _rows_of_the_plan(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The series rows of the stages' whole seconds: the schedule starts at a whole second of
    the series (`start_s`), so row t ends plan second t - start_s (the run's last row, at
    its end, can be cut short)."""
    offset = report["stages"][0]["start_s"]
    assert offset == int(offset)
    return [row for row in report["series"] if row["t"] > offset]


def test_a_stage_ramp_follows_the_plan_and_the_subscriber_gets_what_was_acknowledged(
    fleet40: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    stages = "5s:0..40,5s:40,5s:40..0"
    result = send(fleet40, mosquitto, "--stages", stages, "--rate", "10/s",
                  "--connect-rate", "200/s", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    shape = Shape(parse_stages(stages, rate=10.0))
    planned = shape.planned_per_second(range(40), 40)
    messages = report["messages"]
    assert messages["scheduled"] == sum(planned)
    assert messages["acked"] == messages["published"] == messages["scheduled"]
    assert [(s["start_s"] - report["stages"][0]["start_s"]) for s in report["stages"]] == [0, 5, 10]
    rows = _rows_of_the_plan(report)
    assert len(rows) == len(planned)
    for second, (row, want) in enumerate(zip(rows, planned, strict=True)):
        if row["t"] == int(row["t"]):  # the row is sampled at the end of its second
            want_connected = shape.devices_at(second + 1)
            assert row["target_connected"] == want_connected
            assert abs(row["connected"] - want_connected) <= 1, (second, row)
        if second:
            assert abs(row["scheduled"] - want) <= max(1, 0.02 * want), (second, row, want)
    assert [row["stage"] for row in rows] == [0] * 5 + [1] * 5 + [2] * 5
    watcher.settle(messages["acked"])
    assert sum(watcher.counts().values()) == messages["acked"]


def test_a_rate_step_shows_in_the_series(
    fleet40: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    result = send(fleet40, mosquitto, "--things", "4", "--stages", "5s:4@2/s,5s:4@10/s",
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    rows = _rows_of_the_plan(report)
    scheduled = [row["scheduled"] for row in rows]
    # A message due on a whole second falls on either side of the row it closes: +-1.
    assert all(abs(n - 8) <= 1 for n in scheduled[1:4]), scheduled  # 4 devices at 2/s
    assert all(abs(n - 40) <= 1 for n in scheduled[6:9]), scheduled  # then at 10/s
    # The first message, due on the schedule's first second, may close the row before it.
    assert sum(row["scheduled"] for row in report["series"]) == 4 * (10 + 50)
    assert report["messages"]["acked"] == report["messages"]["scheduled"] == 4 * (10 + 50)


def _connects(log: Path) -> Counter[str]:
    """CONNECTs per client id, from mosquitto's log."""
    found = re.findall(r"New client connected from \S+ as (\S+) ", log.read_text())
    return Counter(found)


def test_a_storm_drops_every_connection_and_each_client_reconnects_once(
    fleet40: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    result = send(fleet40, mosquitto, "--things", "10", "--rate", "5/s", "--duration", "6",
                  "--storm", "3s", "--connect-rate", "20/s",
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    storm = report["storm"]
    assert storm["at_s"] == 3
    assert storm["dropped"] == storm["reconnected"] == 10
    assert storm["reconnect_s"] is not None
    assert storm["reconnect_s"] > 0
    assert storm["connect_p99_ms"] is not None
    assert storm["failed"] == 0
    assert report["connections"]["reconnects"] == 10
    connects = _connects(mosquitto.log_file)
    things = [t["name"] for t in report["things"]]
    assert {name: connects[name] for name in things} == dict.fromkeys(things, 2)
    messages = report["messages"]
    assert messages["acked"] == messages["scheduled"] == 10 * 30  # nothing dropped: owed, sent


def test_churn_cycles_devices_and_owes_their_messages(
    fleet40: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    result = send(fleet40, mosquitto, "--things", "20", "--rate", "2/s", "--duration", "8",
                  "--churn", "100%/min", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    churn = report["churn"]
    assert churn["per_min_percent"] == 100
    assert churn["disconnects"] >= 1
    assert churn["reconnects"] == churn["disconnects"]
    connects = _connects(mosquitto.log_file)
    assert sum(connects[t["name"]] for t in report["things"]) == 20 + churn["reconnects"]
    messages = report["messages"]
    assert messages["acked"] == messages["scheduled"] == 20 * 16


def test_workers_split_the_shape_by_device_and_storm_together(
    fleet40: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    stages = "4s:0..4,4s:4..0"
    result = send(fleet40, mosquitto, "--things", "4", "--workers", "2", "--stages", stages,
                  "--rate", "5/s", "--storm", "5s", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    assert report["workers"]["count"] == 2
    shape = Shape(parse_stages(stages, rate=5.0))
    messages = report["messages"]
    assert messages["acked"] == messages["scheduled"] == sum(shape.planned_per_second(range(4), 4))
    offset = report["stages"][0]["start_s"]
    for row in report["series"]:  # while both workers have devices: none has ended its run
        if row["t"] == int(row["t"]) and 0 < row["t"] - offset <= 6:
            assert row["target_connected"] == shape.devices_at(row["t"] - offset), row
            assert row["stage"] == shape.stage_at(row["t"] - offset - 0.5), row
    storm = report["storm"]
    assert storm["dropped"] == storm["reconnected"] == 3  # N(5 s) = 3 of the ramp down
    assert storm["reconnect_s"] is not None


def test_bad_shapes_are_one_line_and_exit_2(fleet40: Cli, mosquitto: Mosquitto) -> None:
    cases = [
        (["--stages", "5s:0..40,,5s:40"], "empty stage"),
        (["--stages", "5s-0..40"], "DURATION:DEVICES"),
        (["--stages", "5s:10..5..2"], "FROM..TO"),
        (["--stages", "5s:4@-2/s"], "not a rate"),
        (["--stages", "5s:50"], "a stage has 50 devices, the fleet 40"),
        (["--stages", "5s:4", "--duration", "5s"], "cannot be used together"),
        (["--churn", "200%/min"], "at most 100%/min"),
        (["--churn", "lots"], "PERCENT/TIME"),
        (["--storm", "20s", "--duration", "10s"], "after the schedule's end"),
        (["--storm", "1s", "--count", "3"], "not --count"),
    ]
    endpoint = f"127.0.0.1:{mosquitto.port}"
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(
            lambda args: fleet40("send", "--mqtt-endpoint", endpoint, *args, timeout=120),
            [args for args, _ in cases],
        )
        for result, (_, fragment) in zip(results, cases, strict=True):
            assert_one_line_error(result, 2, fragment)
