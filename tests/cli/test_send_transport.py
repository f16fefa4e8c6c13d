"""`send --transport wss` and `send --auth custom:NAME` against a real mosquitto: its WebSocket
listener with TLS (the SigV4 signature is AWS's to check, not mosquitto's) and its password
listener (the stand-in of a custom authorizer); an independent subscriber on the mutual-TLS
listener receives exactly what was acknowledged. Bad input: one line, exit 2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.local import LocalCli
from support.mqtt import FixtureCA, Observer
from support.send import created, load

from elf_async.local.mosquitto import (
    LOCAL_AUTHORIZER,
    LOCAL_PASSWORD,
    LOCAL_USERNAME,
    Listeners,
    Mosquitto,
)


@pytest.fixture
def mosquitto(test_ca: FixtureCA, tmp_path: Path) -> Iterator[Mosquitto]:
    """The test broker with its WebSocket and password listeners (the `observer` uses it)."""
    broker = Mosquitto.start(directory=tmp_path / "mosquitto", ca=test_ca.ca, listeners=True)
    try:
        yield broker
    finally:
        broker.stop()


def _listeners(broker: Mosquitto) -> Listeners:
    assert broker.listeners is not None
    return broker.listeners


def _send(cli: Cli, broker: Mosquitto, port: int, *args: str) -> Any:
    return cli(
        "send", "--mqtt-endpoint", f"127.0.0.1:{port}", "--ca-file", str(broker.ca_file), *args,
    )  # fmt: skip


def _check_delivered(report: dict[str, Any], watcher: Observer) -> None:
    """The observer got exactly the acknowledged messages, each thing's in order."""
    acked = report["messages"]["acked"]
    assert acked == report["messages"]["scheduled"]
    watcher.settle(acked)
    counts = watcher.counts()
    assert sum(counts.values()) == acked
    for row in report["things"]:
        seqs = [doc["seq"] for doc in watcher.documents(f"elf/{row['name']}")]
        assert seqs == list(range(row["acked"]))


def test_twenty_things_send_over_websocket_and_the_subscriber_gets_what_was_acked(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:  # fmt: skip
    fleet = created(cli, test_ca, 20)
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "wss.json"
    result = _send(fleet, mosquitto, _listeners(mosquitto).websocket, "--transport", "wss",
                   "--rate", "10/s", "--count", "15", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["transport"] == "wss+sigv4"
    assert report["endpoint"]["alpn"] is False
    assert report["connections"]["succeeded"] == 20
    assert report["messages"]["acked"] == 20 * 15
    _check_delivered(report, watcher)


def test_a_custom_authorizer_with_good_credentials_connects(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:  # fmt: skip
    fleet = created(cli, test_ca, 3)
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "custom.json"
    result = _send(fleet, mosquitto, _listeners(mosquitto).password,
                   "--auth", f"custom:{LOCAL_AUTHORIZER}", "--username", LOCAL_USERNAME,
                   "--password", LOCAL_PASSWORD, "--rate", "10/s", "--count", "10",
                   "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["transport"] == "mqtts+custom"
    assert report["options"]["connect"]["password"] == "(given)"  # never the password itself
    assert LOCAL_PASSWORD not in report_file.read_text()
    _check_delivered(report, watcher)


def test_a_custom_authorizer_refusing_the_credentials_says_why(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    fleet = created(cli, test_ca, 2)
    report_file = tmp_path / "refused.json"
    result = _send(fleet, mosquitto, _listeners(mosquitto).password,
                   "--auth", f"custom:{LOCAL_AUTHORIZER}", "--username", LOCAL_USERNAME,
                   "--password", "wrong", "--count", "1", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = load(report_file)
    assert report["connections"]["things_failed"] == 2
    (reason,) = report["connections"]["errors"]
    assert "refused the MQTT connection" in reason
    assert "not authorized" in reason.lower()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--transport", "ws"], "AWS IoT takes MQTT over WebSocket only with TLS: use wss"),
        (["--auth", "custom:"], "--auth custom: needs the authorizer's name"),
        (["--auth", "custom:a"], "needs credentials for the authorizer"),
        (["--auth", "custom:a", "--token", "t"], "--token needs --token-key-name"),
        (["--auth", "custom:a", "--password", "p", "--token-signature", "s"], "needs --token"),
        (["--password", "p"], "--password is for a custom authorizer"),
        (["--transport", "wss", "--auth", "x509"], "with --transport wss"),
    ],
)
def test_bad_transport_and_auth_input_is_one_line_and_exit_2(
    cli: Cli, args: list[str], fragment: str
) -> None:
    assert_one_line_error(cli("send", *args), 2, fragment)


def test_every_transport_on_the_local_stack(local_cli: LocalCli, stack: dict[str, Any]) -> None:
    """`local up` opens the WebSocket and password listeners; `--local` reaches each."""
    assert {"wss_port", "password_port"} <= set(stack)
    assert local_cli("create", "2", "--local").returncode == 0
    for args, label in [
        ([], "mqtts+x509"),
        (["--transport", "wss"], "wss+sigv4"),
        (["--auth", "custom:elf-local", "--username", "elf", "--password", "elf-local-secret"],
         "mqtts+custom"),
    ]:  # fmt: skip
        report_file = local_cli.state_dir / f"{label}.json"
        result = local_cli("send", "--local", *args, "--count", "3", "--report", str(report_file))
        assert result.returncode == 0, result.stderr
        report = load(report_file)
        assert report["transport"] == label
        assert report["messages"]["acked"] == 6
