"""`send` at fleet scale on one machine: 5,000 connections from one `send --workers 2`, the
connect budget shared by the workers as the broker sees it, and the open-file limit named
before connecting when it cannot hold the fleet. Against the moto server and a mosquitto
with mutual TLS; an independent subscriber counts what arrived."""

from __future__ import annotations

import json
import re
import resource
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA, Observer
from support.send import load, send

from elf_async.local.mosquitto import Mosquitto

# mosquitto's log: "<epoch seconds>: New client connected from <addr> as <client id> (...)"
CONNECTED = re.compile(r"^(\d+): New client connected from \S+ as (\S+) ", re.MULTILINE)


def _shared_fleet(cli: Cli, test_ca: FixtureCA, devices: int) -> str:
    """`create DEVICES --identity shared` (one certificate for all); returns the prefix."""
    created = cli(
        "create", str(devices), "--identity", "shared", "--cert-mode", "ca",
        "--ca-cert", str(test_ca.cert_file), "--ca-key", str(test_ca.key_file),
        "--key-type", "ec", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    prefix: str = json.loads(created.stdout)["prefix"]
    return prefix


def _connects_by_second(broker: Mosquitto, prefix: str) -> Counter[int]:
    log = broker.log_file.read_text(errors="replace")
    return Counter(int(t) for t, client in CONNECTED.findall(log) if client.startswith(prefix))


@pytest.mark.slow  # ~1-2 min on 2 busy cores; bounded by the command's timeout, nothing timed
def test_5000_connections_from_one_send_with_two_workers(
    cli: Cli,
    test_ca: FixtureCA,
    mosquitto: Mosquitto,
    observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:
    devices = 5000
    prefix = _shared_fleet(cli, test_ca, devices)
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(cli, mosquitto, "--workers", "2", "--rate", "1/s", "--count", "2",
                  "--qos", "1", "--connect-rate", "500/s", "--connect-timeout", "120s",
                  "--report", str(report_file), "-q", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = load(report_file)
    assert report["workers"] == {"count": 2, "lost": []}
    assert report["connections"]["things_failed"] == 0
    assert report["connections"]["succeeded"] == devices
    messages = report["messages"]
    assert messages["scheduled"] == messages["published"] == messages["acked"] == 2 * devices
    assert messages["failed"] == messages["unsent"] == 0
    # The broker's side: every device connected, each once, with its own client id.
    assert sum(_connects_by_second(mosquitto, prefix).values()) == devices
    # An independent subscriber received exactly what was acknowledged, on each device's topic.
    watcher.settle(messages["acked"])
    acked = {f"elf/{t['name']}": t["acked"] for t in report["things"]}
    assert watcher.counts() == acked


def test_workers_share_one_connect_budget_as_the_broker_counts_it(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """--connect-rate is the fleet's: in no whole second does the broker see more connects
    than the rate plus one per worker (each worker's limiter lets one through at once)."""
    devices, rate, workers = 60, 10, 2
    prefix = _shared_fleet(cli, test_ca, devices)
    result = send(cli, mosquitto, "--workers", str(workers), "--rate", "1/s", "--count", "1",
                  "--connect-rate", f"{rate}/s", "-q")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    per_second = _connects_by_second(mosquitto, prefix)
    assert sum(per_second.values()) == devices
    assert max(per_second.values()) <= rate + workers, sorted(per_second.items())


def _with_limit(soft: int, hard: int | None = None) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, soft if hard is None else hard))

    return lower


def _run_limited(
    cli: Cli, soft: int, *args: str, hard: int | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI started with RLIMIT_NOFILE lowered (the hard limit to `soft` too unless given)."""
    return subprocess.run(
        cli.args(*args),
        capture_output=True,
        text=True,
        timeout=300,
        env=cli.env(),
        cwd=cli.state_dir.parent,
        preexec_fn=_with_limit(soft, hard),
    )


def test_send_raises_its_soft_open_file_limit_to_the_hard_one(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """100 connections and a soft limit of 100: the send raises it (the hard limit allows)."""
    prefix = _shared_fleet(cli, test_ca, 100)
    report_file = tmp_path / "report.json"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    result = _run_limited(
        cli, 100, "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}",
        "--ca-file", str(mosquitto.ca_file), "--count", "1", "--connect-rate", "500/s",
        "--report", str(report_file), "-q", hard=hard,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert load(report_file)["messages"]["acked"] == 100
    assert sum(_connects_by_second(mosquitto, prefix).values()) == 100


def test_send_above_the_open_file_limit_is_one_line_and_exit_2(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto
) -> None:
    _shared_fleet(cli, test_ca, 100)
    result = _run_limited(
        cli, 120, "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}",
        "--ca-file", str(mosquitto.ca_file), "--count", "1",
    )  # fmt: skip
    assert_one_line_error(result, 2, "100 connections", "RLIMIT_NOFILE 120", "ulimit -n")
    assert "New client connected" not in mosquitto.log_file.read_text(errors="replace")


def test_run_above_the_open_file_limit_stops_before_creating_anything(
    cli: Cli, iot: Any, test_ca: FixtureCA
) -> None:
    result = _run_limited(
        cli, 128, "run", "200", "--identity", "shared", "--cert-mode", "ca",
        "--ca-cert", str(test_ca.cert_file), "--ca-key", str(test_ca.key_file),
    )  # fmt: skip
    assert_one_line_error(result, 2, "200 connections", "RLIMIT_NOFILE 128", "LimitNOFILE")
    assert iot.list_certificates()["certificates"] == []
