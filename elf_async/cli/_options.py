"""Parse once, at the edge: the options of `send`, `subscribe` and `run`'s send phase, from
what the user typed to typed options in SI units (messages/s, seconds, bytes), each checked
here with one clear line. The jobs never see a unit string; what the user typed is kept for
the report's `options`."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from elf_async.cli._args import ConnectArgs, MetricsArgs, SendArgs, ShardArgs, SubscribeArgs
from elf_async.dataplane.auth import parse_access
from elf_async.dataplane.mqtt import parse_endpoint
from elf_async.dataplane.mqtt5 import (
    MQTT_5,
    Publish5,
    check_group,
    parse_user_property,
    parse_version,
)
from elf_async.dataplane.options import (
    AWS_CONNECT_PER_S,
    AWS_KEEPALIVE_S,
    AWS_MAX_INFLIGHT,
    MAX_RUN_S,
    MQTT_PACKET_IDS,
    ConnectOptions,
    Qos,
    check_publish_rate,
    check_send_length,
)
from elf_async.dataplane.payload import Replay, read_payload_file, template_parts
from elf_async.dataplane.shape import Stage, parse_churn, parse_stages
from elf_async.dataplane.topics import TopicTemplate
from elf_async.errors import UsageError
from elf_async.fdlimit import check_connections
from elf_async.jobs.cluster import ClusterOptions
from elf_async.jobs.live_metrics import MetricsOptions
from elf_async.jobs.send import SendOptions
from elf_async.jobs.subscribe import SubscribeOptions
from elf_async.shards import Shard, choose_shard, parse_start_at
from elf_async.units import parse_duration, parse_rate

DEFAULT_RATE = "1/s"  # the seed's pace
_CLUSTER = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[^\s/:]+):(\d{1,5})$")
_LOCAL_CLUSTER = re.compile(r"^local:(\d+)$")
DEFAULT_DURATION = "10s"
MAX_EXPIRY_S = 2**32 - 1  # MQTT 5's Message Expiry Interval: a four-byte integer
SECRET_OPTIONS = ("password", "token", "token_signature")


def parse_send_options(args: SendArgs, *, fleet_size: int | None = None) -> SendOptions:
    """Every option of `send` checked that can be without the fleet (the fleet checks the
    rest: --things, the topic and the payload against the things' names, --total-rate's share).
    `fleet_size`, when the fleet's size is known before it exists (`run`'s COUNT), lets
    --total-rate's share be checked here too."""
    shard, start_at = parse_shard_options(args.sharding)
    connect = parse_connect_options(args.connect, shard=shard)
    workers = parse_workers(args.workers)
    if fleet_size is not None:  # `run`: the fleet's size is known before it exists
        wanted = fleet_size if args.things is None else min(args.things, fleet_size)
        mine = -(-wanted // shard.count) if shard is not None else wanted
        check_connections(-(-mine // workers), what="the send")
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
    check_output_path("--report", args.report)
    check_output_path("--html", args.html)
    check_topic(args.topic)
    if args.payload_template is not None:
        template_parts(args.payload_template)
    replay = _replay(args)
    if args.rate is not None and args.total_rate is not None:
        raise UsageError("--rate and --total-rate cannot be used together")
    if args.total_rate is not None:
        rate = parse_rate(args.total_rate, what="--total-rate")
        per_thing = rate / fleet_size if fleet_size else None
    else:
        rate = per_thing = parse_rate(args.rate or DEFAULT_RATE, what="--rate")
    if per_thing is not None:
        check_publish_rate(per_thing, allow_over_aws_limits=connect.allow_over_aws_limits)
        check_send_length(args.count, per_thing)
    stages = _stages(args, rate=rate, allow_over_aws_limits=connect.allow_over_aws_limits)
    duration = None
    if stages is not None:
        duration = sum(stage.duration for stage in stages)
    elif args.count is None:
        duration = parse_run_length(args.duration or DEFAULT_DURATION)
    churn, storm = _churn_and_storm(args, span=duration)
    commands = None
    if args.commands is not None:
        commands = parse_rate(args.commands, what="--commands")
        if stages is not None or churn is not None or storm is not None:
            raise UsageError(
                "--commands answers from every device of the fleet: it cannot be combined with "
                "--stages, --churn or --storm yet"
            )
        if workers > 1:
            raise UsageError("--commands runs its controller in one process: drop --workers")
        if shard is not None:
            raise UsageError(
                "--commands needs the whole fleet's controller: it cannot run in a shard"
            )
    cloudwatch_wait = None
    if args.cloudwatch_wait is not None:
        if not args.cloudwatch:
            raise UsageError("--cloudwatch-wait needs --cloudwatch")
        cloudwatch_wait = parse_duration(args.cloudwatch_wait, what="--cloudwatch-wait", zero=True)
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
        connect=connect,
        workers=workers,
        cloudwatch=args.cloudwatch,
        cloudwatch_wait=cloudwatch_wait,
        as_given=_as_given(args, connect) | {"workers": workers},
        shard=shard,
        start_at=start_at,
        stages=stages,
        churn_per_s=churn,
        storm_at=storm,
        commands=commands,
        publish5=parse_publish5(args, connect),
        replay=replay,
        scenario=args.scenario,
    )


def parse_publish5(args: SendArgs, connect: ConnectOptions) -> Publish5 | None:
    """--user-property, --topic-alias and --message-expiry: what every PUBLISH of an MQTT 5
    send carries (None for MQTT 3.1.1, which has no properties: they need --mqtt 5)."""
    given = [
        option
        for option, value in (
            ("--user-property", args.user_property),
            ("--topic-alias", args.topic_alias),
            ("--message-expiry", args.message_expiry),
        )
        if value
    ]
    if connect.mqtt_version != MQTT_5:
        if given:
            raise UsageError(f"{given[0]} needs --mqtt 5 (MQTT 3.1.1 has no properties)")
        return None
    expiry = None
    if args.message_expiry is not None:
        seconds = parse_duration(args.message_expiry, what="--message-expiry")
        if seconds != int(seconds) or seconds > MAX_EXPIRY_S:
            raise UsageError(
                f"--message-expiry {args.message_expiry}: whole seconds, 1 to {MAX_EXPIRY_S}"
            )
        expiry = int(seconds)
    check_utf8("--user-property", args.user_property or [])
    return Publish5(
        user_properties=tuple(parse_user_property(text) for text in args.user_property or []),
        message_expiry=expiry,
        topic_alias=args.topic_alias,
    )


def _stages(
    args: SendArgs, *, rate: float, allow_over_aws_limits: bool
) -> tuple[Stage, ...] | None:
    """--stages replaces --duration and --count; a stage without @RATE sends at --rate."""
    if args.stages is None:
        return None
    for given, option in ((args.duration, "--duration"), (args.count, "--count")):
        if given is not None:
            raise UsageError(
                f"--stages and {option} cannot be used together (stages set the length)"
            )
    if args.total_rate is not None:
        raise UsageError("--stages and --total-rate cannot be used together (rates are per device)")
    stages = parse_stages(args.stages, rate=rate)
    check_publish_rate(
        max(max(s.rate) for s in stages), allow_over_aws_limits=allow_over_aws_limits
    )
    parse_run_length(f"{sum(s.duration for s in stages)}s")
    return stages


def _churn_and_storm(args: SendArgs, *, span: float | None) -> tuple[float | None, float | None]:
    """--churn's share per second and --storm's instant, checked against the schedule."""
    for given, option in ((args.churn, "--churn"), (args.storm, "--storm")):
        if given is not None and span is None:
            raise UsageError(f"{option} needs --duration or --stages, not --count")
    churn = parse_churn(args.churn) if args.churn is not None else None
    storm = None
    if args.storm is not None:
        storm = parse_duration(args.storm, what="--storm", zero=True)
        if span is not None and storm >= span:
            raise UsageError(f"--storm {args.storm}: after the schedule's end ({span:g}s)")
    return churn, storm


def _replay(args: SendArgs) -> Replay | None:
    """--payload-file read and checked whole, before anything is created or connected."""
    if args.payload_file is None:
        if args.payload_order != "per-thing":
            raise UsageError("--payload-order needs --payload-file")
        return None
    for option, value in (
        ("MESSAGE", args.message),
        ("--json-message", args.json_message),
        ("--payload-template", args.payload_template),
    ):
        if value is not None:
            raise UsageError(f"{option} and --payload-file cannot be used together")
    return read_payload_file(args.payload_file, stamp=args.stamp, order=args.payload_order)


def parse_workers(text: str) -> int:
    """--workers: a count, or `auto`: the cores this process may run on, minus one for the
    parent and the system (the event loop of each worker wants a core of its own), at least 1."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) - 1)
    try:
        workers = int(text)
    except ValueError:
        raise UsageError(f"--workers {text}: a number of processes, or auto") from None
    if workers < 1:
        raise UsageError(f"--workers {text}: must be at least 1")
    return workers


def parse_subscribe_options(args: SubscribeArgs) -> SubscribeOptions:
    """Every option of `subscribe` checked that can be without the fleet."""
    shard, start_at = parse_shard_options(args.sharding)
    connect = parse_connect_options(args.connect, shard=shard)
    qos = parse_qos(args.qos)
    if args.client_offset is not None and args.client_offset < 0:
        raise UsageError("--client-offset must be 0 or more")
    duration = parse_run_length(args.duration or DEFAULT_DURATION)
    check_output_path("--report", args.report)
    check_output_path("--html", args.html)
    check_topic(args.topic, filter=True)
    return SubscribeOptions(
        things=args.things,
        client_offset=args.client_offset,
        topic=args.topic,
        append_thing_name=args.append_thing_name,
        qos=qos,
        duration=duration,
        connect=connect,
        as_given=_as_given(args, connect),
        shard=shard,
        start_at=start_at,
        shared=None if args.shared is None else check_group(args.shared),
    )


def parse_cluster_options(
    cluster: str | None,
    *,
    shards: int | None,
    state_root: str | None,
    args: SendArgs,
    identity: str | None,
) -> ClusterOptions | None:
    """`run --cluster ADDRESS --shards N`, checked against the options a cluster run cannot
    take (None: no cluster). The driver shards the run itself, picks the start instant once
    every shard is connected, and runs one process per shard; nothing secret crosses the
    network, so a shared identity (one certificate the shards would have to share) is
    refused."""
    if cluster is None:
        for given, option in ((shards, "--shards"), (state_root, "--shard-state-dir")):
            if given is not None:
                raise UsageError(f"{option} needs --cluster")
        return None
    local = _LOCAL_CLUSTER.match(cluster.strip())
    remote = _CLUSTER.match(cluster.strip())
    if not (local or remote) or (remote and not 0 < int(remote.group(3)) < 65536):
        raise UsageError(
            f"--cluster {cluster!r}: not tcp://HOST:PORT, tls://HOST:PORT (a Dask scheduler) "
            "or local:N (N worker processes on this machine)"
        )
    local_workers = int(local.group(1)) if local else 0
    if local and local_workers < 1:
        raise UsageError(f"--cluster {cluster}: at least 1 worker process")
    count = shards if shards is not None else local_workers or None
    if count is None:
        raise UsageError(f"--cluster {cluster}: say how many shards with --shards N")
    if count < 1:
        raise UsageError(f"--shards {count}: must be at least 1")
    refused = [
        (shard_of(args.sharding.shard) is not None, "--shard (or an array job's index)"),
        (args.sharding.start_at is not None, "--start-at"),
        (parse_workers(args.workers) > 1, "--workers"),
        (args.metrics.metrics_port is not None, "--metrics-port"),
        (args.cloudwatch, "--cloudwatch"),
    ]
    for given, option in refused:
        if given:
            raise UsageError(
                f"--cluster shards the run itself (one process per shard, started together "
                f"once all are connected): drop {option}"
            )
    if identity == "shared":
        raise UsageError(
            "--identity shared makes one certificate that every shard would need: it would "
            "have to cross the network, which --cluster never does; use --identity thing"
        )
    return ClusterOptions(
        address=cluster.strip() if remote else None,
        local_workers=local_workers,
        shards=count,
        state_root=state_root,
    )


def shard_of(given: str | None) -> Shard | None:
    """--shard, else the array job's environment (Kubernetes Indexed Job, AWS Batch)."""
    return choose_shard(given, os.environ)


def parse_shard_options(args: ShardArgs) -> tuple[Shard | None, float | None]:
    """The shard (--shard, else the array job's environment) and --start-at in epoch seconds."""
    shard = shard_of(args.shard)
    start_at = None if args.start_at is None else parse_start_at(args.start_at)
    return shard, start_at


def parse_connect_options(args: ConnectArgs, *, shard: Shard | None = None) -> ConnectOptions:
    """The broker, the connect pace and the keep-alive, against AWS IoT's limits unless
    --allow-over-aws-limits. --connect-rate is the account's: a shard connects at its share."""
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
    transport, auth, custom = parse_access(
        transport=args.transport,
        auth=args.auth,
        username=args.username,
        password=args.password,
        token=args.token,
        token_key_name=args.token_key_name,
        token_signature=args.token_signature,
    )
    return ConnectOptions(
        mqtt_host=host,
        port=port,
        ca_file=args.ca_file,
        connect_per_s=connect_per_s if shard is None else shard.share(connect_per_s),
        connect_timeout=connect_timeout,
        connect_retries=args.connect_retries,
        keepalive=keepalive,
        allow_over_aws_limits=args.allow_over_aws_limits,
        mqtt_version=parse_version(args.mqtt),
        transport=transport,
        auth=auth,
        custom=custom,
    )


def parse_metrics_options(args: MetricsArgs) -> MetricsOptions | None:
    """--metrics-port and its companions (None: no metrics). Whether the port is free is
    known when it is bound (elf_async.jobs.live_metrics.serving), before the run."""
    if args.metrics_port is None:
        given = args != MetricsArgs()
        if given:
            raise UsageError("--metrics-addr and --metrics-linger need --metrics-port")
        return None
    if not 1 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port {args.metrics_port}: not a port (1 to 65535)")
    if not _valid_host(args.metrics_addr):
        raise UsageError(
            f"--metrics-addr {args.metrics_addr!r}: not an address or a host name "
            "(example: 127.0.0.1, or 0.0.0.0 for every interface)"
        )
    linger = parse_duration(args.metrics_linger, what="--metrics-linger", zero=True)
    return MetricsOptions(port=args.metrics_port, addr=args.metrics_addr, linger=linger)


def parse_qos(value: int) -> Qos:
    if value == 0:
        return 0
    if value == 1:
        return 1
    raise UsageError(f"--qos {value}: AWS IoT supports QoS 0 and 1 only")


def parse_run_length(text: str) -> float:
    """--duration in seconds: a send or a subscribe lasts at most MAX_RUN_S (a longer one is
    a typo, not a test)."""
    seconds = parse_duration(text, what="--duration")
    if seconds > MAX_RUN_S:
        raise UsageError(f"--duration {text}: at most {MAX_RUN_S / 3600:.0f}h (7 days)")
    return seconds


def check_topic(topic: str | None, *, filter: bool = False) -> None:
    """The topic template's placeholders and syntax, before the fleet (whose names and topic
    root check what it renders to); an empty --topic is refused, not taken for the default."""
    if topic is not None:
        TopicTemplate(topic, fleet="", filter=filter)


def check_output_path(option: str, path: Path | None) -> None:
    """Refuse an output file that cannot be written before the work, not after it: its
    directory exists and is writable (the file is replaced atomically), it is not a directory,
    and an existing file is writable. A device or a pipe (/dev/stdout) is written in place,
    so only it must be writable."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    if path.exists() and not path.is_file():
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: not writable")
        return
    directory = path.parent
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise UsageError(f"{option} {path}: the directory {directory} {problem}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the directory {directory} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: the file is not writable")


def check_state_dir(path: Path) -> None:
    """The state dir, or the first of its parents that exists, must be a directory: a file
    there would surface later as an unreadable ledger or stack record."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        subject = "it" if existing == path else str(existing)
        what = "a file" if existing.is_file() else "not a directory"
        raise UsageError(
            f"--state-dir {path}: the state dir must be a directory, {subject} is {what}"
        )


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_endpoint_url(option: str, text: str) -> str:
    """An http:// or https:// URL with a host name or address (what botocore accepts), checked
    here instead of becoming a traceback at the first AWS call."""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise UsageError(f"{option} {text!r}: the port is not a number from 0 to 65535") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not _valid_host(host):
        raise UsageError(
            f"{option} {text!r}: not an http:// or https:// URL with a host "
            "(example: http://127.0.0.1:5000)"
        )
    return text


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        labels = host.removesuffix(".").split(".")
        return len(host) <= 255 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def check_utf8(option: str, value: object) -> None:
    """Refuse text that is not valid UTF-8. Invalid bytes on the command line or in the
    environment arrive as lone surrogates, which no topic, payload, file name or terminal line
    can carry. `value` may be a string, a path or a list of them (repeatable options)."""
    for item in value if isinstance(value, list | tuple) else [value]:
        if not isinstance(item, str | Path):
            continue
        text = str(item)
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a surrogate"
            raise UsageError(
                f"{option}: not valid UTF-8 ({what} at character {exc.start + 1})"
            ) from None


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
    for secret in SECRET_OPTIONS:  # a credential never goes into a report
        if given["connect"].get(secret) is not None:
            given["connect"][secret] = "(given)"
    return given


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value
