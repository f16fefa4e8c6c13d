"""MQTT 5 (`--mqtt 5`) against a real mosquitto (2.0 speaks MQTT 5): user properties, the
topic alias and the message expiry on the wire, PUBACK reason codes in the report, shared
subscriptions splitting a fleet's messages; bad input."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA, Observer
from support.report import assert_conforms
from support.send import load, send, things_of
from support.wait import wait_for_log

from elf_async.local.mosquitto import Mosquitto
from elf_async.report.model import SubscribeReport


@pytest.mark.parametrize("alias", [False, True], ids=["topic", "topic-alias"])
def test_user_properties_reach_a_subscriber_on_the_right_topic(
    fleet: Cli,
    mosquitto: Mosquitto,
    observer: Callable[..., Observer],
    tmp_path: Path,
    alias: bool,
) -> None:
    watcher = observer("elf/#", qos=1, protocol=paho.MQTTv5)
    report_file = tmp_path / "report.json"
    result = send(
        fleet, mosquitto, "--mqtt", "5", "--rate", "10/s", "--count", "5",
        "--user-property", "team=load", "--user-property", "run=a=b",
        "--message-expiry", "60s", *(["--topic-alias"] if alias else []),
        "--report", str(report_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["mqtt_version"] == "5"
    assert report["reason_codes"] == {}
    assert report["messages"]["acked"] == 15
    watcher.settle(15)
    for name in things_of(fleet):
        docs = watcher.documents(f"elf/{name}")  # the alias resolved to each thing's topic
        assert sorted(d["seq"] for d in docs) == list(range(5))
        assert {d["thing"] for d in docs} == {name}
    assert watcher.user_properties == [[("team", "load"), ("run", "a=b")]] * 15
    # What is left of the expiry when the broker forwards it: at most the 60 s given.
    assert all(expiry is not None and 0 < expiry <= 60 for expiry in watcher.expiries)


def test_a_3_1_1_report_says_so(fleet: Cli, mosquitto: Mosquitto, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--count", "1", "--report", str(report_file))
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["mqtt_version"] == "3.1.1"
    assert "reason_codes" not in report


@pytest.fixture
def acl_broker(test_ca: FixtureCA, tmp_path: Path) -> Iterator[Mosquitto]:
    """A test broker whose ACL lets each thing publish under elf/ only (`elf/denied/...` is
    outside it): mosquitto answers a denied MQTT 5 PUBLISH with PUBACK 0x87."""
    acl = tmp_path / "acl"
    acl.write_text("pattern write elf/%u\npattern read elf/#\n")
    broker = Mosquitto.start(
        directory=tmp_path / "acl-mosquitto",
        ca=test_ca.ca,
        extra_config=[f"acl_file {acl}"],
    )
    try:
        yield broker
    finally:
        broker.stop()


def test_a_refused_publish_counts_as_failed_with_its_reason_code(
    fleet: Cli, acl_broker: Mosquitto, tmp_path: Path
) -> None:
    """Two workers, one thing each: their refusals are added up."""
    report_file = tmp_path / "report.json"
    result = send(
        fleet, acl_broker, "--mqtt", "5", "--count", "3", "--things", "2", "--workers", "2",
        "--topic", "elf/denied/{thing}", "--report", str(report_file),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = load(report_file)
    assert report["reason_codes"] == {"0x87 Not authorized": 6}
    messages = report["messages"]
    assert (messages["published"], messages["acked"], messages["failed"]) == (6, 0, 6)
    verdict = "send failed: 6 messages failed (not acknowledged; refused: 6 0x87 Not authorized)"
    assert result.stdout.startswith(verdict), result.stdout


def test_a_refused_connect_names_its_connack_reason_code(
    fleet: Cli, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """mosquitto refuses a client id without one of its `clientid_prefixes` in CONNACK: MQTT
    5's reason code 0x87, named."""
    broker = Mosquitto.start(
        directory=tmp_path / "prefixed",
        ca=test_ca.ca,
        extra_config=["clientid_prefixes nobody-"],
    )
    try:
        report_file = tmp_path / "report.json"
        result = send(
            fleet, broker, "--mqtt", "5", "--count", "1", "--things", "1",
            "--report", str(report_file),
        )  # fmt: skip
    finally:
        broker.stop()
    report = load(report_file)
    errors = report["connections"]["errors"]
    assert result.returncode == 1, errors
    assert errors == {"the broker refused the MQTT connection: CONNACK 0x87 Not authorized": 1}


def _subscribe(cli: Cli, broker: Mosquitto, *args: str) -> subprocess.Popen[str]:
    return cli.popen(
        "-q", "subscribe", "--mqtt-endpoint", f"127.0.0.1:{broker.port}", "--ca-file",
        str(broker.ca_file), "--duration", "10m", *args,
    )  # fmt: skip


def test_a_shared_subscription_group_splits_the_messages_without_loss(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two `subscribe --shared g` processes: each gets a share (more than none), together all
    the acknowledged messages, once; `report merge` of their reports counts no loss."""
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    members = [
        _subscribe(fleet, mosquitto, "--mqtt", "5", "--shared", "g", "--report", str(path))
        for path in reports
    ]
    try:
        for name in things_of(fleet):  # every member's subscription is in place
            member_id = rf"{re.escape(name)}-g-[0-9a-f]+-watch"
            wait_for_log(mosquitto.log_file, rf"Sending SUBACK to {member_id}$", count=2)
        sent_file = tmp_path / "send.json"
        result = send(fleet, mosquitto, "--rate", "20/s", "--count", "20",
                      "--report", str(sent_file))  # fmt: skip
        assert result.returncode == 0, result.stderr
        acked = load(sent_file)["messages"]["acked"]
        assert acked == 60
        for path in reports:
            assert not path.exists()
    finally:
        for member in members:
            member.send_signal(2)  # Ctrl-C: each writes its report
        for member in members:
            member.communicate(timeout=60)
    received = []
    for path in reports:
        report: dict[str, Any] = json.loads(path.read_text())
        assert_conforms(report, SubscribeReport)
        assert report["shared_group"] == "g"
        assert report["mqtt_version"] == "5"
        assert report["messages"]["lost"] == 0  # a member's gaps are the others' share
        received.append(report["messages"]["received"])
    assert all(count > 0 for count in received), received
    merged_file = tmp_path / "merged.json"
    merged = fleet("report", "merge", *map(str, reports), "--output", str(merged_file))
    assert merged.returncode in (0, 1), merged.stderr
    group: dict[str, Any] = json.loads(merged_file.read_text())
    assert group["messages"]["received"] == group["messages"]["unique"] == acked
    assert group["messages"]["lost"] == 0
    assert len(group["things"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mqtt", "4"], "--mqtt 4: the MQTT version is 3.1.1 or 5"),
        (["--mqtt", "5", "--user-property", "novalue"], "--user-property 'novalue': not KEY=VALUE"),
        (["--topic-alias"], "--topic-alias needs --mqtt 5"),
        (["--user-property", "a=b"], "--user-property needs --mqtt 5"),
        (["--mqtt", "5", "--message-expiry", "1.5s"], "--message-expiry 1.5s: whole seconds"),
    ],
)
def test_bad_mqtt_5_input_is_one_line_and_exit_2(cli: Cli, args: list[str], message: str) -> None:
    result = cli("send", "--mqtt-endpoint", "127.0.0.1:1", *args)
    assert_one_line_error(result, 2, message)


def test_a_bad_shared_group_is_one_line_and_exit_2(cli: Cli) -> None:
    result = cli("subscribe", "--mqtt-endpoint", "127.0.0.1:1", "--shared", "a/b")
    assert_one_line_error(result, 2, "--shared 'a/b': a group name without")
