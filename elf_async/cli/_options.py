"""Parse once, at the edge: the options of `send`, `subscribe` and `run`'s send phase, from
what the user typed to typed options in SI units (messages/s, seconds, bytes), each checked
here with one clear line. The jobs never see a unit string; what the user typed is kept for
the report's `options`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.dataplane.mqtt import parse_endpoint
from elf_async.dataplane.options import (
    AWS_CONNECT_PER_S,
    AWS_KEEPALIVE_S,
    AWS_MAX_INFLIGHT,
    MQTT_PACKET_IDS,
    ConnectOptions,
    Qos,
    check_publish_rate,
)
from elf_async.errors import UsageError
from elf_async.jobs.send import SendOptions
from elf_async.jobs.subscribe import SubscribeOptions
from elf_async.units import parse_duration, parse_rate

DEFAULT_RATE = "1/s"  # the seed's pace
DEFAULT_DURATION = "10s"


@dataclass(frozen=True, kw_only=True)
class ConnectArgs:
    """The connection options of `send`, `subscribe` and `run`, as typed."""

    mqtt_endpoint: str | None = None
    port: int | None = None
    ca_file: Path | None = None
    connect_rate: str = "100/s"
    connect_timeout: str = "10s"
    connect_retries: int = 3
    keepalive: str = "60s"
    allow_over_aws_limits: bool = False


@dataclass(frozen=True, kw_only=True)
class SendArgs:
    """`send`'s options as typed (`run` gives some of them); their order is the report's."""

    message: str | None = None
    things: int | None = None
    rate: str | None = None
    total_rate: str | None = None
    duration: str | None = None
    count: int | None = None
    qos: int = 1
    topic: str | None = None
    append_thing_name: bool = False
    json_message: Path | None = None
    payload_template: str | None = None
    payload_size: int | None = None
    stamp: bool | None = None
    max_inflight: int = AWS_MAX_INFLIGHT
    drain: str = "5s"
    report: Path | None = None
    connect: ConnectArgs = field(default_factory=ConnectArgs)
    workers: int = 1


@dataclass(frozen=True, kw_only=True)
class SubscribeArgs:
    """`subscribe`'s options as typed; their order is the report's."""

    things: int | None = None
    client_offset: int = 0
    topic: str | None = None
    append_thing_name: bool = False
    qos: int = 1
    duration: str | None = None
    report: Path | None = None
    connect: ConnectArgs = field(default_factory=ConnectArgs)


def parse_send_options(args: SendArgs) -> SendOptions:
    """Every option of `send` checked that can be without the fleet (the fleet checks the
    rest: --things, the topic and the payload against the things' names, --total-rate's share)."""
    connect = parse_connect_options(args.connect)
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    qos = parse_qos(args.qos)
    if args.count is not None and args.duration is not None:
        raise UsageError("--count and --duration cannot be used together")
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if not 1 <= args.max_inflight <= MQTT_PACKET_IDS:
        raise UsageError(
            f"--max-inflight {args.max_inflight}: MQTT has {MQTT_PACKET_IDS} packet ids, "
            "so 1 to that many messages can be in flight"
        )
    if args.max_inflight > AWS_MAX_INFLIGHT and not connect.allow_over_aws_limits:
        raise UsageError(
            f"--max-inflight {args.max_inflight}: AWS IoT allows 1 to {AWS_MAX_INFLIGHT}"
        )
    drain = parse_duration(args.drain, what="--drain")
    check_report_path(args.report)
    if args.rate is not None and args.total_rate is not None:
        raise UsageError("--rate and --total-rate cannot be used together")
    if args.total_rate is not None:
        rate = parse_rate(args.total_rate, what="--total-rate")
    else:
        rate = parse_rate(args.rate or DEFAULT_RATE, what="--rate")
        check_publish_rate(rate, allow_over_aws_limits=connect.allow_over_aws_limits)
    duration = None
    if args.count is None:
        duration = parse_duration(args.duration or DEFAULT_DURATION, what="--duration")
    return SendOptions(
        message=args.message,
        things=args.things,
        rate=rate,
        rate_is_total=args.total_rate is not None,
        duration=duration,
        count=args.count,
        qos=qos,
        topic=args.topic,
        append_thing_name=args.append_thing_name,
        json_message=args.json_message,
        payload_template=args.payload_template,
        payload_size=args.payload_size,
        stamp=args.stamp,
        max_inflight=args.max_inflight,
        drain=drain,
        report=args.report,
        connect=connect,
        workers=args.workers,
        as_given=_as_given(args, connect),
    )


def parse_subscribe_options(args: SubscribeArgs) -> SubscribeOptions:
    """Every option of `subscribe` checked that can be without the fleet."""
    connect = parse_connect_options(args.connect)
    qos = parse_qos(args.qos)
    if args.client_offset < 0:
        raise UsageError("--client-offset must be 0 or more")
    duration = parse_duration(args.duration or DEFAULT_DURATION, what="--duration")
    check_report_path(args.report)
    return SubscribeOptions(
        things=args.things,
        client_offset=args.client_offset,
        topic=args.topic,
        append_thing_name=args.append_thing_name,
        qos=qos,
        duration=duration,
        report=args.report,
        connect=connect,
        as_given=_as_given(args, connect),
    )


def parse_connect_options(args: ConnectArgs) -> ConnectOptions:
    """The broker, the connect pace and the keep-alive, against AWS IoT's limits unless
    --allow-over-aws-limits."""
    connect_timeout = parse_duration(args.connect_timeout, what="--connect-timeout")
    keepalive = _keepalive(args.keepalive, allow_over_aws_limits=args.allow_over_aws_limits)
    connect_per_s = parse_rate(args.connect_rate, what="--connect-rate")
    if connect_per_s > AWS_CONNECT_PER_S and not args.allow_over_aws_limits:
        raise UsageError(
            f"--connect-rate {args.connect_rate}: AWS IoT allows {AWS_CONNECT_PER_S:.0f} "
            "connects/s per account (pass --allow-over-aws-limits to go beyond)"
        )
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is out of range")
    host, port = None, args.port
    if args.mqtt_endpoint is not None:
        host, endpoint_port = parse_endpoint(args.mqtt_endpoint)
        if endpoint_port is not None and port is not None and endpoint_port != port:
            raise UsageError(f"--mqtt-endpoint says port {endpoint_port} but --port says {port}")
        port = port or endpoint_port
    return ConnectOptions(
        mqtt_host=host,
        port=port,
        ca_file=args.ca_file,
        connect_per_s=connect_per_s,
        connect_timeout=connect_timeout,
        connect_retries=args.connect_retries,
        keepalive=keepalive,
        allow_over_aws_limits=args.allow_over_aws_limits,
    )


def parse_qos(value: int) -> Qos:
    if value == 0:
        return 0
    if value == 1:
        return 1
    raise UsageError(f"--qos {value}: AWS IoT supports QoS 0 and 1 only")


def check_report_path(path: Path | None) -> None:
    """Refuse an unwritable --report before the run, not after it."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"--report {path}: the directory {path.parent} does not exist")


def _keepalive(text: str, *, allow_over_aws_limits: bool) -> int:
    """Whole seconds, within MQTT's range and (unless allowed beyond) the range AWS keeps."""
    seconds = parse_duration(text, what="--keepalive")
    if seconds != int(seconds):
        raise UsageError(f"--keepalive {seconds:g}s: MQTT counts it in whole seconds")
    keepalive = int(seconds)
    low, high = AWS_KEEPALIVE_S
    if keepalive > 65535:
        raise UsageError(f"--keepalive {keepalive}s: MQTT allows 1 to 65535 seconds")
    if not low <= keepalive <= high and not allow_over_aws_limits:
        raise UsageError(
            f"--keepalive {keepalive}s: AWS IoT clamps the keep-alive to {low}-{high} s "
            "(pass --allow-over-aws-limits to use it anyway, e.g. against a local broker)"
        )
    return keepalive


def _as_given(args: SendArgs | SubscribeArgs, connect: ConnectOptions) -> dict[str, Any]:
    """The options as typed, for the report (paths as text); the connect timeout and the
    keep-alive in seconds, as the report has always shown them."""
    given: dict[str, Any] = _jsonable(dataclasses.asdict(args))
    given["connect"] |= {
        "connect_timeout": connect.connect_timeout,
        "keepalive": connect.keepalive,
    }
    return given


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value
