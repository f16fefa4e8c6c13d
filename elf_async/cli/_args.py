"""The options of `send`, `subscribe` and `run`'s send phase, declared once.

Each option is a field of `SendArgs`, `SubscribeArgs`, `ConnectArgs`, `ShardArgs` or
`MetricsArgs`: its type, its typer declaration and its default. A command takes them whole with
`@takes`: a parameter annotated `SendArgs` becomes every option of `send` in the command's
signature (typer reads that), and they arrive gathered back into one `SendArgs`. So `run`
accepts every option `send` has, and a new option is declared in one place. What the options
mean in SI units is decided in elf_async.cli._options.
"""

# No `from __future__ import annotations`: the fields' typer declarations are read at run time.

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from elf_async.dataplane.options import AWS_MAX_INFLIGHT

R = TypeVar("R")

Things = Annotated[
    int | None,
    typer.Option(min=1, help="Use the first N ready things [default: all].", show_default=False),
]
Qos = Annotated[int, typer.Option(help="MQTT QoS: 0 or 1 (AWS IoT has no QoS 2).")]
AppendThingName = Annotated[
    bool, typer.Option(help="Append /{thing} to --topic (the seed's flag).")
]
Report = Annotated[
    Path | None,
    typer.Option(help="Write the JSON report (schema elf-async/report/2; reads 1 and 2) here."),
]
SHARD_HELP = (
    "Shard I of N (0-based): only this shard's slice of the fleet's things; --api-rate, "
    "--connect-rate and the account's publish budget split N ways. [default: "
    "$JOB_COMPLETION_INDEX/$ELF_SHARD_COUNT, or $AWS_BATCH_JOB_ARRAY_INDEX/"
    "$AWS_BATCH_JOB_ARRAY_SIZE]"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardArgs:
    """The options of a sharded `send`, `subscribe` or `run`, as typed."""

    shard: Annotated[str | None, typer.Option(help=SHARD_HELP, show_default=False)] = None
    start_at: Annotated[
        str | None,
        typer.Option(
            help="Connect first, then start at this instant: RFC 3339 (2026-05-01T12:00:00Z), "
            "epoch seconds, or +30s from now; every shard given the same one sends one "
            "fleet-wide schedule. At most 5 s in the past (caught up late). [default: once "
            "connected]",
            show_default=False,
        ),
    ] = None


Html = Annotated[
    Path | None,
    typer.Option(help="Write the report as one HTML page with charts (works offline) here."),
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectArgs:
    """The connection options of `send`, `subscribe` and `run`, as typed."""

    mqtt_endpoint: Annotated[
        str | None,
        typer.Option(
            "--mqtt-endpoint",
            help="Broker HOST[:PORT] [default: the local stack, else DescribeEndpoint "
            "iot:Data-ATS, cached with the fleet].",
            show_default=False,
        ),
    ] = None
    port: Annotated[
        int | None,
        typer.Option(
            help="8883, or 443 (ALPN x-amzn-mqtt-ca). [default: 8883]", show_default=False
        ),
    ] = None
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            "--root-cert",
            help="CAs that vouch for the broker [default: Amazon Root CA 1 and 3, shipped].",
            show_default=False,
        ),
    ] = None
    connect_rate: Annotated[
        str, typer.Option(help="New connections per second (AWS: 500/s per account).")
    ] = "100/s"
    connect_timeout: Annotated[
        str, typer.Option(help="Time for one connect (TCP, TLS, CONNACK).")
    ] = "10s"
    connect_retries: Annotated[
        int, typer.Option(min=0, help="Extra attempts for a thing's first connection.")
    ] = 3
    keepalive: Annotated[
        str,
        typer.Option(
            help="MQTT keep-alive: a PINGREQ after this long without traffic (AWS: 30s-20m)."
        ),
    ] = "60s"
    mqtt: Annotated[
        str, typer.Option("--mqtt", help="The MQTT version: 3.1.1 or 5 (AWS IoT speaks both).")
    ] = "3.1.1"
    allow_over_aws_limits: Annotated[
        bool,
        typer.Option(
            "--allow-over-aws-limits",
            help="Permit rates and windows above AWS IoT's per-connection limits.",
        ),
    ] = False
    transport: Annotated[
        str,
        typer.Option(
            help="mqtts: MQTT over TLS; wss: MQTT over WebSocket (wss://<endpoint>/mqtt, "
            "port 443), signed with SigV4 from the AWS credentials (--profile)."
        ),
    ] = "mqtts"
    auth: Annotated[
        str | None,
        typer.Option(
            help="x509 (each thing's certificate), sigv4 (with --transport wss), or "
            "custom:NAME (AWS IoT custom authorizer NAME: TLS on 443, ALPN mqtt, no client "
            "certificate; with --token or --password). [default: x509; sigv4 with wss]",
            show_default=False,
        ),
    ] = None
    username: Annotated[
        str | None,
        typer.Option(
            help="With --auth custom: the MQTT username, before the authorizer's query. "
            "[default: the client id]",
            show_default=False,
        ),
    ] = None
    password: Annotated[
        str | None,
        typer.Option(
            envvar="ELF_MQTT_PASSWORD",
            help="With --auth custom: the MQTT password (the authorizer gets it base64). "
            "Never written to the report.",
            show_default=False,
        ),
    ] = None
    token: Annotated[
        str | None,
        typer.Option(
            envvar="ELF_AUTH_TOKEN",
            help="With --auth custom: the token for the authorizer (with --token-key-name). "
            "Never written to the report.",
            show_default=False,
        ),
    ] = None
    token_key_name: Annotated[
        str | None,
        typer.Option(help="With --token: the authorizer's token key name.", show_default=False),
    ] = None
    token_signature: Annotated[
        str | None,
        typer.Option(
            help="With --token: its signature (base64), for an authorizer with signing on.",
            show_default=False,
        ),
    ] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsArgs:
    """Live Prometheus metrics, for `send`, `subscribe` and `run`."""

    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve live Prometheus metrics on this port (/metrics). [default: none]",
            show_default=False,
        ),
    ] = None
    metrics_addr: Annotated[str, typer.Option(help="The address --metrics-port listens on.")] = (
        "127.0.0.1"
    )
    metrics_linger: Annotated[
        str,
        typer.Option(
            help="After the run: keep serving until one scrape has read the final figures, "
            "at most this long (e.g. your scrape interval).",
        ),
    ] = "0s"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SendArgs:
    """`send`'s options as typed; their order is the report's."""

    message: Annotated[
        str | None,
        typer.Argument(
            help='Sent as {"msg": MESSAGE}. [default: IoT ELF Hello]', show_default=False
        ),
    ] = None
    things: Things = None
    rate: Annotated[
        str | None,
        typer.Option(
            help="Per thing: 10/s, 600/m, 0.5 (per second). [default: 1/s]", show_default=False
        ),
    ] = None
    total_rate: Annotated[
        str | None, typer.Option(help="Spread evenly over the things instead of --rate.")
    ] = None
    duration: Annotated[
        str | None, typer.Option(help="60, 60s, 5m. [default: 10s]", show_default=False)
    ] = None
    count: Annotated[
        int | None, typer.Option(help="Messages per thing, instead of --duration.")
    ] = None
    stages: Annotated[
        str | None,
        typer.Option(
            help="Load shape instead of --duration: DURATION:DEVICES[@RATE],... with DEVICES N "
            "or FROM..TO (connected devices, ramped) and RATE per device (R or R1..R2; "
            "default --rate), e.g. 30s:0..500,2m:500,1m:500@5/s,30s:500..0.",
            show_default=False,
        ),
    ] = None
    churn: Annotated[
        str | None,
        typer.Option(
            help="Disconnect and reconnect this share of the connected devices continuously, "
            "e.g. 5%/min (at most 100%/min).",
            show_default=False,
        ),
    ] = None
    storm: Annotated[
        str | None,
        typer.Option(
            help="Drop every connection this long into the schedule (e.g. 20s) and time the "
            "reconnect (report: storm).",
            show_default=False,
        ),
    ] = None
    qos: Qos = 1
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic template with {thing}, {index}, {fleet}. [default: <topic root>/{thing}]",
            show_default=False,
        ),
    ] = None
    append_thing_name: AppendThingName = False
    json_message: Annotated[
        Path | None, typer.Option(help="Send this JSON document (exactly, unless --stamp).")
    ] = None
    payload_template: Annotated[
        str | None, typer.Option(help="Payload text with {thing}, {seq}, {ts} (epoch ms).")
    ] = None
    payload_size: Annotated[
        int | None, typer.Option(help="Pad every payload to exactly BYTES (trailing spaces).")
    ] = None
    payload_file: Annotated[
        Path | None,
        typer.Option(
            help="Replay recorded messages: one JSON document per line (JSON Lines), sent in "
            "order, exactly (unless --stamp).",
            show_default=False,
        ),
    ] = None
    payload_order: Annotated[
        str,
        typer.Option(
            help="--payload-file: per-thing (every thing sends line 1, 2, ... of its own) or "
            "round-robin (the things share the lines: thing p's message k is line p + k x "
            "things, mod the lines).",
        ),
    ] = "per-thing"
    stamp: Annotated[
        bool | None,
        typer.Option(
            "--stamp/--no-stamp",
            help="Add thing, seq, ts to the JSON. [default: yes, except for --json-message "
            "and --payload-file]",
            show_default=False,
        ),
    ] = None
    max_inflight: Annotated[
        int, typer.Option(help="Unacknowledged QoS 1 messages per client (AWS: 100).")
    ] = AWS_MAX_INFLIGHT
    drain: Annotated[
        str, typer.Option(help="After the run or Ctrl-C: wait this long for acknowledgements.")
    ] = "5s"
    user_property: Annotated[
        list[str] | None,
        typer.Option(
            "--user-property",
            help="MQTT 5: KEY=VALUE on every message (repeatable).",
            show_default=False,
        ),
    ] = None
    topic_alias: Annotated[
        bool,
        typer.Option(
            "--topic-alias",
            help="MQTT 5: send each thing's topic once, then a topic alias (if the broker "
            "allows one).",
        ),
    ] = False
    message_expiry: Annotated[
        str | None,
        typer.Option(help="MQTT 5: the broker drops a message not delivered within this: 60s."),
    ] = None
    report: Report = None
    html: Html = None
    connect: ConnectArgs = dataclasses.field(default_factory=ConnectArgs)
    sharding: ShardArgs = dataclasses.field(default_factory=ShardArgs)
    metrics: MetricsArgs = dataclasses.field(default_factory=MetricsArgs)
    cloudwatch: Annotated[
        bool,
        typer.Option(
            "--cloudwatch",
            help="After the run, read AWS/IoT's own counts for its window from CloudWatch "
            "into the report (aws_metrics).",
        ),
    ] = False
    cloudwatch_wait: Annotated[
        str | None,
        typer.Option(
            help="With --cloudwatch: how long after the run to let AWS publish its one-minute "
            "metrics before reading them. [default: 3m; 0s with --local]",
            show_default=False,
        ),
    ] = None
    workers: Annotated[
        str,
        typer.Option(
            help="Processes sharing the things, each with its own event loop: one schedule, "
            "one live view, one report. `auto`: the usable cores minus one, at least 1.",
        ),
    ] = "1"
    commands: Annotated[
        str | None,
        typer.Option(
            help="Also send commands cloud to device at this rate across the fleet (10/s, "
            "600/m): the controller (`create --controller`) publishes to <root>/<thing>/cmd, "
            "each device replies on <root>/<thing>/cmd/reply; round trips in the report.",
            show_default=False,
        ),
    ] = None
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="Read the options from this TOML file, with [[group]]s of things that send "
            "differently; an option given here wins over the file's.",
            # Read first (by elf_async.cli._common.Command): its values become the defaults.
            is_eager=True,
            show_default=False,
        ),
    ] = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubscribeArgs:
    """`subscribe`'s options as typed; their order is the report's."""

    things: Things = None
    client_offset: Annotated[
        int | None,
        typer.Option(
            help="Connect as the things after the first N instead (0: as the watched things "
            "themselves); subscriber j still watches thing j's topic. [default: as "
            "<thing>-watch, which a send on the same things cannot collide with]",
            show_default=False,
        ),
    ] = None
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic filter template with {thing}, {index}, {fleet}; + and # allowed. "
            "[default: <topic root>/{thing}]",
            show_default=False,
        ),
    ] = None
    append_thing_name: AppendThingName = False
    qos: Qos = 1
    duration: Annotated[
        str | None, typer.Option(help="How long to listen: 60, 60s, 5m. [default: 10s]")
    ] = None
    shared: Annotated[
        str | None,
        typer.Option(
            help="Subscribe as a member of shared subscription GROUP ($share/GROUP/...): the "
            "group's members split the messages (merge their reports with `report merge`).",
            show_default=False,
        ),
    ] = None
    report: Report = None
    html: Html = None
    connect: ConnectArgs = dataclasses.field(default_factory=ConnectArgs)
    sharding: ShardArgs = dataclasses.field(default_factory=ShardArgs)
    metrics: MetricsArgs = dataclasses.field(default_factory=MetricsArgs)


ARGS = (SendArgs, SubscribeArgs, ConnectArgs, ShardArgs, MetricsArgs)


def _parameters(args: type) -> Iterator[inspect.Parameter]:
    """One keyword parameter per option of `args`, a nested one's (`connect`) in its place."""
    hints = get_type_hints(args, include_extras=True)
    for f in dataclasses.fields(args):
        if f.type in ARGS:
            yield from _parameters(hints[f.name])
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        yield inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]
        )


def _gather(args: type[R], values: dict[str, Any]) -> R:
    """`args` built from the options in `values` (popped from it)."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(args):  # type: ignore[arg-type]  # R is one of ARGS
        fields[f.name] = _gather(f.type, values) if f.type in ARGS else values.pop(f.name)
    return args(**fields)


def takes(command: Callable[..., R]) -> Callable[..., R]:
    """`command` with each parameter annotated one of `ARGS`
    spread into that class's options in its signature (what typer reads), and gathered back
    when called."""
    signature = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    gathered: dict[str, type] = {}
    for parameter in signature.parameters.values():
        if parameter.annotation in ARGS:
            gathered[parameter.name] = parameter.annotation
            parameters += _parameters(parameter.annotation)
        else:
            parameters.append(parameter)
    names = [p.name for p in parameters]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise TypeError(f"{command.__name__}: parameters declared twice: {', '.join(clashes)}")

    @functools.wraps(command)
    def spread(**values: Any) -> R:
        for name, args in gathered.items():
            values[name] = _gather(args, values)
        return command(**values)

    # A positional parameter after a keyword-only one is not a valid signature: all are
    # keyword-only (typer passes keywords), in their order (the order of --help).
    spread.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
    )
    spread.__annotations__ = {p.name: p.annotation for p in parameters} | {
        "return": signature.return_annotation
    }
    return spread
