"""`--metrics-port`: /metrics scraped during a real local send (mosquitto with mutual TLS, the
fleet in moto), its counters growing, its final figures equal to the report's; promtool's
verdict; the Grafana dashboard's metric names against a live scrape."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.fixtures import ROOT, Cli, free_port
from support.send import load
from support.wait import wait_for_log, wait_until

from elf_async.local.mosquitto import Mosquitto

DASHBOARD = ROOT / "dashboards" / "elf-async.json"
THINGS = 4  # the fleet4 fixture's
COUNT = 40  # messages per thing: 8 s at 5/s, time enough to see two scrapes differ


def scrape(port: int) -> str | None:
    """/metrics as text, or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def samples(text: str) -> dict[str, float]:
    """Each sample by its name and labels, e.g. `elf_connections{state=failed}`; the command,
    fleet and shard labels are checked here and left out of the key."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert {"command", "fleet", "shard"} <= labels.keys(), sample
            assert "thing" not in labels
            rest = ",".join(
                f"{k}={v}"
                for k, v in sorted(labels.items())
                if k not in ("command", "fleet", "shard")
            )
            found[f"{sample.name}{{{rest}}}" if rest else sample.name] = sample.value
    return found


def start_send(cli: Cli, broker: Mosquitto, port: int, report: Path, *args: str) -> Any:
    return cli.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{broker.port}", "--ca-file", str(broker.ca_file),
        "--metrics-port", str(port), "--metrics-linger", "10m", "--report", str(report), *args,
    )  # fmt: skip


def final_scrape(process: Any, port: int, report: Path) -> str:
    """The figures once the report exists (the command then waits for this one scrape)."""
    wait_until(report.exists, what="the report")
    text = scrape(port)
    assert text is not None
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_counters_grow_while_sending_and_end_equal_to_the_report(
    fleet4: Cli, mosquitto: Mosquitto, tmp_path: Path, workers: str
) -> None:
    port, report_file = free_port(), tmp_path / "report.json"
    process = start_send(fleet4, mosquitto, port, report_file, "--rate", "5/s", "--count",
                         str(COUNT), "--workers", workers)  # fmt: skip
    try:
        planned = THINGS * COUNT
        seen: list[float] = []

        def published_between(low: float) -> bool:
            text = scrape(port)
            value = samples(text).get("elf_messages_published_total", 0.0) if text else 0.0
            if low < value < planned:
                seen.append(value)
                return True
            return False

        wait_until(lambda: published_between(0), what="a scrape with some messages published")
        wait_until(lambda: published_between(seen[0]), what="a later scrape with more published")
        text = final_scrape(process, port, report_file)
        final = samples(text)
    finally:
        process.kill()
        process.wait()
    report = load(report_file)
    messages, connections, latency = report["messages"], report["connections"], report["latency_ms"]
    assert messages["published"] == planned
    fleet_id = report["fleet"]["fleet_id"]
    assert f'elf_messages_acked_total{{command="send",fleet="{fleet_id}",shard=""}}' in text
    assert final["elf_messages_scheduled_total"] == messages["scheduled"]
    assert final["elf_messages_published_total"] == messages["published"]
    assert final["elf_messages_acked_total"] == messages["acked"]
    assert final["elf_messages_failed_total"] == messages["failed"]
    assert final["elf_reconnects_total"] == connections["reconnects"]
    assert final["elf_connections{state=failed}"] == connections["things_failed"]
    assert final["elf_connections{state=connected}"] == 0  # all closed at the end
    assert final["elf_target_rate"] == report["rate"]["target_per_s"]
    for metric, summary in [
        ("elf_ack_latency_seconds", latency["ack"]),
        ("elf_schedule_lag_seconds", latency["lag"]),
        ("elf_connect_seconds", latency["connect"]),
    ]:
        assert final[f"{metric}_count"] == summary["count"] > 0
        assert final[f"{metric}_bucket{{le=+Inf}}"] == summary["count"]
        # The report's mean is rounded to the µs.
        mean_s = final[f"{metric}_sum"] / final[f"{metric}_count"]
        assert mean_s == pytest.approx(summary["mean"] / 1000, abs=1e-6)
    names = {re.sub(r"_(bucket|count|sum)$|\{.*", "", key) for key in final}
    assert dashboard_metrics() <= names


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's PromQL uses (histograms by their base name)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(elf_[a-z_]+)\b", e)}
    assert names, "the dashboard queries no elf_ metric"
    return {re.sub(r"_bucket$", "", name) for name in names}


def test_promtool_finds_no_problem_in_the_exposition(
    fleet4: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (Debian: apt-get install prometheus; `make deps` does)")
    port, report_file = free_port(), tmp_path / "report.json"
    process = start_send(fleet4, mosquitto, port, report_file, "--rate", "5/s", "--count", "3")
    try:
        text = final_scrape(process, port, report_file)
    finally:
        process.kill()
        process.wait()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == check.stderr.strip() == "", check.stdout + check.stderr


def test_subscribe_serves_its_counts_and_ends_equal_to_its_report(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    port, report_file = free_port(), tmp_path / "sub.json"
    endpoint = ("--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
                str(mosquitto.ca_file))  # fmt: skip
    process = fleet.popen("subscribe", *endpoint, "--quiet", "--duration", "10m",
                          "--metrics-port", str(port), "--metrics-linger", "10m",
                          "--report", str(report_file))  # fmt: skip

    def figure(name: str) -> float:
        text = scrape(port)
        return samples(text).get(name, -1.0) if text else -1.0

    try:
        wait_until(lambda: figure("elf_connections{state=connected}") == 3, what="3 connected")
        wait_for_log(mosquitto.log_file, r"Sending SUBACK to \S+-watch$", count=3)
        sent = fleet("send", *endpoint, "--count", "5", "--rate", "10/s", timeout=120)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: figure("elf_messages_received_total") == 15, what="15 received")
        process.send_signal(signal.SIGINT)
        wait_until(report_file.exists, what="the report")
        text = scrape(port)
        assert text is not None
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, stderr
    finally:
        process.kill()
        process.wait()
    final, report = samples(text), json.loads(report_file.read_text())
    assert 'command="subscribe"' in text
    messages = report["messages"]
    assert final["elf_messages_received_total"] == messages["received"] == 15
    assert final["elf_messages_lost_total"] == messages["lost"]
    assert final["elf_messages_duplicate_total"] == messages["duplicates"]
    assert final["elf_end_to_end_latency_seconds_count"] == 15
    assert final["elf_connect_seconds_count"] == report["latency_ms"]["connect"]["count"] == 3
    assert final["elf_connections{state=failed}"] == 0
