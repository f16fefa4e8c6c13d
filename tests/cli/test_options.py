"""Parsing at the edge (elf_async.cli._options): what the user typed becomes typed options in SI
units, every bad option is one UsageError line, and the report keeps what the user typed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from elf_async.cli._args import ShardArgs
from elf_async.cli._common import api_rates
from elf_async.cli._options import (
    ConnectArgs,
    SendArgs,
    SubscribeArgs,
    check_output_path,
    check_utf8,
    parse_connect_options,
    parse_endpoint_url,
    parse_send_options,
    parse_subscribe_options,
)
from elf_async.controlplane.aws import AWS_DEFAULT_QUOTAS
from elf_async.errors import UsageError


def test_send_defaults_are_the_documented_ones_in_si_units() -> None:
    options = parse_send_options(SendArgs())
    assert (options.rate, options.rate_is_total) == (1.0, False)
    assert (options.duration, options.count) == (10.0, None)
    assert (options.drain, options.qos, options.max_inflight, options.workers) == (5.0, 1, 100, 1)
    connect = options.connect
    assert (connect.mqtt_host, connect.port, connect.ca_file) == (None, None, None)
    assert (connect.connect_per_s, connect.connect_timeout, connect.keepalive) == (100.0, 10.0, 60)


def test_send_units_become_messages_per_second_and_seconds() -> None:
    options = parse_send_options(
        SendArgs(rate="600/m", duration="5m", drain="250ms", connect=ConnectArgs(keepalive="2m"))
    )
    assert (options.rate, options.duration, options.drain) == (10.0, 300.0, 0.25)
    assert options.connect.keepalive == 120


def test_a_count_replaces_the_default_duration() -> None:
    options = parse_send_options(SendArgs(count=3))
    assert (options.duration, options.count) == (None, 3)


def test_a_total_rate_is_left_for_the_fleet_to_share_and_check() -> None:
    """500/s over the whole fleet may be 5/s per thing: only the fleet's size can tell."""
    options = parse_send_options(SendArgs(total_rate="500/s"))
    assert (options.rate, options.rate_is_total) == (500.0, True)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (SendArgs(qos=2), "--qos 2: AWS IoT supports QoS 0 and 1 only"),
        (SendArgs(rate="fast"), "--rate: 'fast' is not a rate"),
        (SendArgs(rate="101/s"), "AWS IoT drops publishes above 100/s per connection"),
        (SendArgs(rate="1/s", total_rate="3/s"), "--rate and --total-rate cannot be used together"),
        (SendArgs(total_rate="none"), "--total-rate: 'none' is not a rate"),
        (SendArgs(duration="-1"), "--duration: '-1' is not a duration"),
        (SendArgs(count=3, duration="2"), "--count and --duration cannot be used together"),
        (SendArgs(count=0), "--count must be at least 1"),
        (SendArgs(max_inflight=101), "--max-inflight 101: AWS IoT allows 1 to 100"),
        (SendArgs(max_inflight=0), "--max-inflight 0"),
        (SendArgs(drain="soon"), "--drain: 'soon' is not a duration"),
        (SendArgs(workers="0"), "--workers 0: must be at least 1"),
        (SendArgs(workers="two"), "--workers two: a number of processes, or auto"),
        (SendArgs(report=Path("/nonexistent/dir/r.json")), "does not exist"),
        (SendArgs(report=Path("/")), "--report /: is a directory"),
        (SendArgs(count=10**20), "--count 100000000000000000000 at 1 messages/s per thing"),
        (SendArgs(count=604_801), "a send lasts at most 7 days (at most --count 604800"),
        (SendArgs(rate="10/s", count=6_048_001), "(at most --count 6048000 at this rate)"),
        (SendArgs(duration="169h"), "--duration 169h: at most 168h (7 days)"),
        (SendArgs(topic=""), "--topic must not be empty"),
        (SendArgs(topic="elf/{nope}"), "unknown placeholder {nope}"),
        (SendArgs(payload_template="{unknown}"), "unknown field {unknown}: the fields are"),
        (SendArgs(connect=ConnectArgs(connect_rate="501/s")), "allows 500 connects/s"),
        (SendArgs(connect=ConnectArgs(connect_timeout="x")), "--connect-timeout: 'x'"),
        (SendArgs(connect=ConnectArgs(keepalive="1.5s")), "whole seconds"),
        (SendArgs(connect=ConnectArgs(keepalive="10s")), "clamps the keep-alive to 30-1200 s"),
        (SendArgs(connect=ConnectArgs(mqtt_endpoint="host:99999")), "out of range"),
        (SendArgs(connect=ConnectArgs(mqtt_endpoint="a b")), "is not HOST or HOST:PORT"),
        (SendArgs(connect=ConnectArgs(port=0)), "--port 0 is out of range"),
        (
            SendArgs(connect=ConnectArgs(mqtt_endpoint="h:8883", port=443)),
            "--mqtt-endpoint says port 8883 but --port says 443",
        ),
    ],
)
def test_every_bad_send_option_is_one_usage_error(args: SendArgs, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_send_options(args)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_a_send_lasts_at_most_7_days() -> None:
    """The bound is the run's length: a --count is refused only when its pace makes it longer."""
    assert parse_send_options(SendArgs(duration="168h")).duration == 7 * 24 * 3600
    assert parse_send_options(SendArgs(count=604_800)).count == 604_800
    assert parse_send_options(SendArgs(rate="100/s", count=60_480_000)).count == 60_480_000
    # --total-rate's share is known only with the fleet: unchecked without its size...
    assert parse_send_options(SendArgs(total_rate="1/s", count=10**9)).count == 10**9
    # ...and checked with it (`run` knows its COUNT before it creates anything).
    with pytest.raises(UsageError, match=r"--count 1000000000 at 0\.5 messages/s per thing"):
        parse_send_options(SendArgs(total_rate="1/s", count=10**9), fleet_size=2)
    with pytest.raises(UsageError, match="150 messages/s per thing: AWS IoT drops publishes"):
        parse_send_options(SendArgs(total_rate="300/s"), fleet_size=2)


def test_over_aws_limits_only_when_allowed() -> None:
    allowed = ConnectArgs(connect_rate="1000/s", keepalive="10s", allow_over_aws_limits=True)
    options = parse_send_options(SendArgs(rate="500/s", max_inflight=1000, connect=allowed))
    assert (options.rate, options.max_inflight) == (500.0, 1000)
    assert (options.connect.connect_per_s, options.connect.keepalive) == (1000.0, 10)
    with pytest.raises(UsageError, match="MQTT allows 1 to 65535 seconds"):
        parse_connect_options(dataclasses.replace(allowed, keepalive="70000s"))
    # More than MQTT's packet ids in flight would leave no free id: never, even when allowed.
    with pytest.raises(UsageError, match="MQTT has 65535 packet ids"):
        parse_send_options(SendArgs(max_inflight=65536, connect=allowed))


@pytest.mark.parametrize(
    ("endpoint", "port", "expected"),
    [
        ("broker.example", None, ("broker.example", None)),
        ("broker.example:443", None, ("broker.example", 443)),
        ("broker.example", 443, ("broker.example", 443)),
        ("[::1]:8883", 8883, ("::1", 8883)),
        (None, 443, (None, 443)),  # --port alone applies to the local, cached or described host
    ],
)
def test_the_broker_is_host_and_port(
    endpoint: str | None, port: int | None, expected: tuple[str | None, int | None]
) -> None:
    connect = parse_connect_options(ConnectArgs(mqtt_endpoint=endpoint, port=port))
    assert (connect.mqtt_host, connect.port) == expected


SEND_AS_GIVEN: dict[str, Any] = {
    "message": None, "things": 2, "rate": "600/m", "total_rate": None, "duration": None,
    "count": None, "stages": None, "churn": None, "storm": None, "qos": 1, "topic": None,
    "append_thing_name": False,
    "json_message": "a.json", "payload_template": None, "payload_size": None,
    "payload_file": None, "payload_order": "per-thing", "stamp": None,
    "max_inflight": 100, "drain": "5s", "report": "r.json", "html": "r.html",
    "user_property": None, "topic_alias": False, "message_expiry": None,
    "connect": {
        "mqtt_endpoint": "h:1", "port": None, "ca_file": "/x/ca.pem", "connect_rate": "100/s",
        "connect_timeout": 10.0, "connect_retries": 3, "keepalive": 60, "mqtt": "3.1.1",
        "allow_over_aws_limits": False, "transport": "mqtts", "auth": None, "username": None,
        "password": None, "token": None, "token_key_name": None, "token_signature": None,
    },
    "sharding": {"shard": None, "start_at": None},
    "metrics": {"metrics_port": None, "metrics_addr": "127.0.0.1", "metrics_linger": "0s"},
    "cloudwatch": False, "cloudwatch_wait": None, "workers": 1, "commands": None,
    "scenario": None,
}  # fmt: skip


def test_the_report_keeps_what_the_user_typed() -> None:
    """The report's `options` as before the typed options: the user's strings (paths as text),
    the connect timeout and keep-alive in seconds."""
    connect = ConnectArgs(mqtt_endpoint="h:1", ca_file=Path("/x/ca.pem"))
    options = parse_send_options(
        SendArgs(
            things=2, rate="600/m", json_message=Path("a.json"), report=Path("r.json"),
            html=Path("r.html"), connect=connect,
        )
    )  # fmt: skip
    assert options.as_given == SEND_AS_GIVEN
    subscribe = parse_subscribe_options(SubscribeArgs(duration="5m", connect=connect))
    assert subscribe.as_given == {
        "things": None, "client_offset": None, "topic": None, "append_thing_name": False,
        "qos": 1, "duration": "5m", "shared": None, "report": None, "html": None,
        "connect": SEND_AS_GIVEN["connect"], "sharding": SEND_AS_GIVEN["sharding"],
        "metrics": SEND_AS_GIVEN["metrics"],
    }  # fmt: skip


def test_subscribe_options() -> None:
    options = parse_subscribe_options(SubscribeArgs(qos=0, duration="2m", client_offset=3))
    assert (options.qos, options.duration, options.client_offset) == (0, 120.0, 3)
    assert parse_subscribe_options(SubscribeArgs()).duration == 10.0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (SubscribeArgs(qos=2), "--qos 2: AWS IoT supports QoS 0 and 1 only"),
        (SubscribeArgs(client_offset=-1), "--client-offset must be 0 or more"),
        (SubscribeArgs(duration="later"), "--duration: 'later' is not a duration"),
        (SubscribeArgs(report=Path("/nonexistent/dir/r.json")), "does not exist"),
        (SubscribeArgs(report=Path("/")), "--report /: is a directory"),
        (SubscribeArgs(duration="8d"), "--duration: '8d' is not a duration"),
        (SubscribeArgs(duration="10081m"), "--duration 10081m: at most 168h (7 days)"),
        (SubscribeArgs(topic=""), "--topic must not be empty"),
        (SubscribeArgs(connect=ConnectArgs(connect_rate="0/s")), "must be above zero"),
    ],
)
def test_every_bad_subscribe_option_is_one_usage_error(args: SubscribeArgs, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_subscribe_options(args)
    assert fragment in str(caught.value)


def test_an_output_path_is_checked_before_the_work(tmp_path: Path) -> None:
    """A new or existing file in a writable directory, or a device written in place, passes;
    what could only fail once the work is done is refused now, naming the option."""
    check_output_path("--report", tmp_path / "new.json")
    (tmp_path / "old.json").write_text("{}")
    check_output_path("--junit", tmp_path / "old.json")
    check_output_path("--report", Path("/dev/null"))
    check_output_path("--report", None)
    (tmp_path / "file").write_text("")
    for path, message in [
        (tmp_path, f"--junit {tmp_path}: is a directory"),
        (tmp_path / "no" / "r.json", f"the directory {tmp_path / 'no'} does not exist"),
        (tmp_path / "file" / "r.json", f"the directory {tmp_path / 'file'} is not a directory"),
    ]:
        with pytest.raises(UsageError) as caught:
            check_output_path("--junit", path)
        assert str(caught.value).endswith(message)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the modes say")
def test_an_output_path_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UsageError, match=r"the directory .* is not writable"):
        check_output_path("--report", locked / "r.json")
    read_only = tmp_path / "r.json"
    read_only.write_text("{}")
    read_only.chmod(0o444)
    with pytest.raises(UsageError, match="the file is not writable"):
        check_output_path("--report", read_only)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:5000", "https://iot.eu-west-1.amazonaws.com/", "http://[::1]:80"]
)
def test_an_endpoint_url_is_http_or_https_with_a_host(url: str) -> None:
    assert parse_endpoint_url("--endpoint-url", url) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("notaurl", "not an http:// or https:// URL with a host"),
        ("ftp://host", "not an http:// or https:// URL"),
        ("http://", "not an http:// or https:// URL"),
        ("http://bad_host:80", "not an http:// or https:// URL"),
        ("http://-x.example", "not an http:// or https:// URL"),
        ("http://host:99999", "the port is not a number from 0 to 65535"),
        ("http://host:port", "the port is not a number"),
    ],
)
def test_a_bad_endpoint_url_is_one_usage_error(url: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_endpoint_url("--endpoint-url", url)
    assert str(caught.value).startswith(f"--endpoint-url {url!r}: {fragment}")


def test_text_must_be_valid_utf8() -> None:
    """Invalid bytes on the command line arrive as lone surrogates (os.fsdecode)."""
    check_utf8("--topic", "elf/ünï/😀")
    check_utf8("--count", 3)
    bad = os.fsdecode(b"elf/\xff")
    for value in (bad, Path(bad), ["ok", bad]):
        with pytest.raises(
            UsageError, match=r"^--topic: not valid UTF-8 \(byte 0xff at character 5\)$"
        ):
            check_utf8("--topic", value)


def test_api_rates_pace_only_apis_elf_async_calls() -> None:
    assert api_rates(["CreateThing=30/s", "AttachPolicy=600/m"]) == {
        "CreateThing": 30.0, "AttachPolicy": 10.0
    }  # fmt: skip
    assert api_rates(None) == {}
    with pytest.raises(UsageError) as caught:
        api_rates(["CreateThing=30/s", "Foo=10/s"])
    message = str(caught.value)
    assert message.startswith("--api-rate Foo: not an API elf-async calls; one of AttachPolicy, ")
    assert all(name in message for name in AWS_DEFAULT_QUOTAS)


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 1), (8, 7)])
def test_workers_auto_is_the_usable_cores_minus_one_and_at_least_one(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    options = parse_send_options(SendArgs(workers="auto"))
    assert options.workers == workers
    assert options.as_given["workers"] == workers  # the report says what auto became


def test_commands_are_a_rate_in_one_process_of_a_whole_fleet() -> None:
    assert parse_send_options(SendArgs(commands="600/m")).commands == 10.0
    assert parse_send_options(SendArgs()).commands is None
    with pytest.raises(UsageError, match=r"--commands: 'fast' is not a rate"):
        parse_send_options(SendArgs(commands="fast"))
    with pytest.raises(UsageError, match="--commands runs its controller in one process"):
        parse_send_options(SendArgs(commands="1/s", workers="2"))
    with pytest.raises(UsageError, match="--commands needs the whole fleet's controller"):
        parse_send_options(SendArgs(commands="1/s", sharding=ShardArgs(shard="0/2")))
