"""`subscribe` against a real mosquitto with mutual TLS, fed by mosquitto_pub (not elf-async)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA
from support.report import assert_conforms
from support.wait import wait_for_log, wait_until

from elf_async.dataplane.subscriber import SequenceTracker
from elf_async.local.mosquitto import Mosquitto
from elf_async.report.model import SubscribeReport


def test_sequence_tracker_counts_loss_duplicates_and_order() -> None:
    tracker = SequenceTracker()
    for seq in (5, 6, 8, 7, 7, 10, 6):
        tracker.add(seq)
    assert tracker.received == 7
    assert tracker.duplicates == 2
    assert tracker.out_of_order == 1  # 7 after 8
    assert tracker.lost == 1  # 9
    assert tracker.above == {10}  # memory stays small


@pytest.fixture
def fleet(fleet4: Cli) -> Cli:
    return fleet4


def _publish(broker: Mosquitto, key: Path, cert: Path, topic: str, payloads: list[str]) -> None:
    """mosquitto_pub, one line per message, QoS 1."""
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile",
         str(broker.ca_file), "--cert", str(cert), "--key", str(key), "-t", topic, "-q", "1",
         "-i", "feeder", "-l"],
        input="\n".join(payloads) + "\n", text=True, check=True, timeout=30,
    )  # fmt: skip


def _wait_subscribed(broker: Mosquitto, clients: list[str]) -> None:
    """Until the broker has acknowledged each client's SUBSCRIBE (its SUBACK is logged)."""
    for client in clients:
        wait_for_log(broker.log_file, rf"Sending SUBACK to {re.escape(client)}$")


def test_counts_received_lost_duplicated_out_of_order_and_latency(
    fleet: Cli, mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """Listens until every message fed has been printed, then Ctrl-C: the report counts them."""
    report_file = tmp_path / "sub.json"
    process = fleet.popen(
        "subscribe", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--things", "2", "--client-offset", "2", "--duration", "10m",
        "--report", str(report_file),
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    printed: list[str] = []

    def read_stdout() -> None:
        for line in process.stdout or ():
            printed.append(line)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        names = sorted(p.stem for p in (fleet.state_dir / "certs").glob("*.crt"))
        _wait_subscribed(mosquitto, names[2:])
        now = int(time.time() * 1000)
        key, cert = test_ca.client_cert(tmp_path, "feeder")

        def doc(thing: str, seq: int) -> str:
            return json.dumps({"msg": "m", "thing": thing, "seq": seq, "ts": now})

        _publish(mosquitto, key, cert, f"elf/{names[0]}", [doc(names[0], s) for s in range(5)])
        _publish(
            mosquitto, key, cert, f"elf/{names[1]}",
            [doc(names[1], s) for s in (0, 1, 3, 2, 2, 5)] + ["not json"],
        )  # fmt: skip
        wait_until(
            lambda: sum(line.startswith("elf/") for line in printed[:]) >= 12,
            what="the 12 messages printed by subscribe",
        )
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stderr = process.stderr.read()
        reader.join(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    stdout = "".join(printed)
    assert f"elf/{names[0]} (" in stdout  # each message printed: topic, size, payload
    report: dict[str, Any] = json.loads(report_file.read_text())
    assert report["schema"] == "elf-async/report/2"
    assert_conforms(report, SubscribeReport)
    assert report["outcome"] == "interrupted"
    rows = {row["name"]: row for row in report["things"]}
    assert rows[names[0]] == {
        "name": names[0], "received": 5, "unique": 5, "lost": 0, "duplicates": 0,
        "out_of_order": 0,
    }  # fmt: skip
    assert rows[names[1]]["received"] == 6
    assert rows[names[1]]["lost"] == 1  # 4
    assert rows[names[1]]["duplicates"] == 1
    assert rows[names[1]]["out_of_order"] == 1
    assert report["messages"]["unstamped"] == 1
    assert report["latency_ms"]["end_to_end"]["count"] == 11
    assert {s["name"] for s in report["subscribers"]} == set(names[2:])  # connected as others


def test_listens_for_its_duration_then_exits_0_with_a_report(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "sub.json"
    result = fleet(
        "subscribe", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--things", "2", "--duration", "1", "--report", str(report_file),
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(report_file.read_text())
    assert report["outcome"] == "completed"
    assert report["messages"]["received"] == 0


def test_bad_input(fleet: Cli, mosquitto: Mosquitto) -> None:
    endpoint = f"127.0.0.1:{mosquitto.port}"
    for args, fragment in [
        (["--qos", "2"], "QoS 0 and 1"),
        (["--topic", "elf/#/x"], "last level"),
        (["--things", "3", "--client-offset", "2"], "the fleet has 4"),
        (["--duration", "later"], "--duration"),
    ]:
        result = fleet("subscribe", "--mqtt-endpoint", endpoint, *args, timeout=60)
        assert_one_line_error(result, 2, fragment)


def _endpoint(broker: Mosquitto) -> tuple[str, ...]:
    return ("--mqtt-endpoint", f"127.0.0.1:{broker.port}", "--ca-file", str(broker.ca_file))


def test_subscribe_next_to_a_send_on_the_same_things_collides_with_nothing(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """By default each subscriber is `<thing>-watch` with the thing's certificate: the send
    connects as the things themselves, so no connection takes another over."""
    sub_report, send_report = tmp_path / "sub.json", tmp_path / "send.json"
    process = fleet.popen(
        "subscribe", *_endpoint(mosquitto), "--duration", "10m", "--report", str(sub_report)
    )
    try:
        names = sorted(p.stem for p in (fleet.state_dir / "certs").glob("*.crt"))
        _wait_subscribed(mosquitto, [f"{name}-watch" for name in names])
        sent = fleet("send", *_endpoint(mosquitto), "--count", "5", "--rate", "10/s",
                     "--report", str(send_report), timeout=120)  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for_log(mosquitto.log_file, r"Sending PUBLISH to elf-\S+-watch", count=20)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "never retrieved" not in stderr
    send = json.loads(send_report.read_text())
    assert (send["connections"]["takeovers"], send["connections"]["reconnects"]) == (0, 0)
    report = json.loads(sub_report.read_text())
    assert_conforms(report, SubscribeReport)
    assert (report["connections"]["takeovers"], report["connections"]["reconnects"]) == (0, 0)
    assert report["messages"]["received"] == report["messages"]["unique"] == 20
    assert report["messages"]["lost"] == 0
    assert sorted(s["name"] for s in report["subscribers"]) == [f"{n}-watch" for n in names]


def test_two_clients_with_the_same_client_ids_are_a_named_session_takeover_and_fail(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A second send on the same things: the broker keeps one connection per client id, so
    the two take each other's connections over until the second ends. It names the takeover
    (report, summary, stderr) and exits 1 instead of passing with a tug of war's counts."""
    first = fleet.popen("send", *_endpoint(mosquitto), "--rate", "1/s", "--duration", "10m")
    try:
        names = sorted(p.stem for p in (fleet.state_dir / "certs").glob("*.crt"))
        for name in names:
            wait_for_log(mosquitto.log_file, rf"New client connected from \S+ as {name} ")
        report_file = tmp_path / "second.json"
        second = fleet("send", *_endpoint(mosquitto), "--rate", "2/s", "--count", "20",
                       "--report", str(report_file), timeout=180)  # fmt: skip
        first.send_signal(signal.SIGINT)
        _, first_stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert "already connected, closing old connection" in mosquitto.log_file.read_text()
    assert second.returncode == 1, second.stdout + second.stderr
    error = second.stderr.splitlines()[-1]
    assert error.startswith("elf-async: error: session takeover: the broker closed "), error
    assert "another client connected with the same client id" in error
    assert second.stdout.startswith("send failed: session takeover: ")
    report = json.loads(report_file.read_text())
    assert report["connections"]["takeovers"] >= 2
    assert any(
        reason.startswith("connection lost: taken over")
        for reason in report["connections"]["errors"]
    )
    assert first.returncode == 130, first_stderr
    assert "never retrieved" not in first_stderr
