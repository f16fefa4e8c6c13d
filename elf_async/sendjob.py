"""A `send` from options to report: check every option before connecting anything, build each
thing's topic, payload encoder and schedule, run the `Sender`, write the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async import localstack
from elf_async.config import Settings
from elf_async.connections import Connector
from elf_async.dataplane import (
    AWS_MAX_INFLIGHT,
    AWS_PUBLISH_PER_S,
    ConnectOptions,
    ready_identities,
    resolve_endpoint,
)
from elf_async.errors import UsageError
from elf_async.ledger import Ledger
from elf_async.payload import build_spec
from elf_async.report import send_report, write_report
from elf_async.schedule import plan
from elf_async.sender import Publisher, Sender, Shared, Snapshot
from elf_async.stopping import StopSignal
from elf_async.topics import TopicTemplate, outside_root
from elf_async.units import parse_duration, parse_rate

DEFAULT_RATE = "1/s"  # the seed's pace
DEFAULT_DURATION = "10s"


@dataclass(frozen=True)
class SendRequest:
    """`send`'s options as given (strings where the user typed units)."""

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
    connect: ConnectOptions = field(default_factory=ConnectOptions)

    def as_options(self) -> dict[str, Any]:
        """The options for the report (paths as strings)."""
        options: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return options


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


@dataclass
class Warnings:
    """Things worth telling the user that do not stop the run."""

    lines: list[str] = field(default_factory=list)


def _rates(request: SendRequest, things: int) -> float:
    """Messages per second per thing, from --rate or --total-rate."""
    if request.rate is not None and request.total_rate is not None:
        raise UsageError("--rate and --total-rate cannot be used together")
    if request.total_rate is not None:
        rate = parse_rate(request.total_rate, what="--total-rate") / things
    else:
        rate = parse_rate(request.rate or DEFAULT_RATE, what="--rate")
    if rate > AWS_PUBLISH_PER_S and not request.connect.allow_over_aws_limits:
        raise UsageError(
            f"{rate:g} messages/s per thing: AWS IoT drops publishes above "
            f"{AWS_PUBLISH_PER_S:.0f}/s per connection (use more --things, or pass "
            "--allow-over-aws-limits)"
        )
    return rate


def build_publishers(
    request: SendRequest, ledger: Ledger, state_dir: Path, warnings: Warnings
) -> tuple[list[Publisher], Shared]:
    """Every option checked, every thing's topic, payload and schedule ready."""
    if request.qos not in (0, 1):
        raise UsageError(f"--qos {request.qos}: AWS IoT supports QoS 0 and 1 only")
    if request.count is not None and request.duration is not None:
        raise UsageError("--count and --duration cannot be used together")
    if request.count is not None and request.count < 1:
        raise UsageError("--count must be at least 1")
    if not 1 <= request.max_inflight <= AWS_MAX_INFLIGHT and not (
        request.max_inflight >= 1 and request.connect.allow_over_aws_limits
    ):
        raise UsageError(
            f"--max-inflight {request.max_inflight}: AWS IoT allows 1 to {AWS_MAX_INFLIGHT}"
        )
    parse_duration(request.drain, what="--drain")
    check_report_path(request.report)
    request.connect.connect_per_s()
    meta = ledger.meta()
    root = meta.get("topic_root") or "elf"
    template_text = request.topic or f"{root}/{{thing}}"
    if request.append_thing_name:
        template_text = template_text.rstrip("/") + "/{thing}"
    template = TopicTemplate(template_text, fleet=meta.get("fleet_id", ""))
    spec = build_spec(
        message=request.message,
        json_message=request.json_message,
        template=request.payload_template,
        size=request.payload_size,
        stamp=request.stamp,
    )
    identities = ready_identities(ledger, state_dir, count=request.things)
    rate = _rates(request, len(identities))
    duration = None
    if request.count is None:
        duration = parse_duration(request.duration or DEFAULT_DURATION, what="--duration")
    schedules = plan(len(identities), rate, duration=duration, count=request.count)
    longest = max(identities, key=lambda i: len(i.name)).name
    spec.check(longest, max(s.total for s in schedules))
    shared = Shared()
    publishers = []
    for identity, schedule in zip(identities, schedules, strict=True):
        topic = template.check(identity.name, identity.index)
        publishers.append(
            Publisher(
                identity,
                topic,
                schedule,
                spec.encoder(identity.name),
                qos=request.qos,
                window=request.max_inflight,
                shared=shared,
            )
        )
    outside = [p.topic for p in publishers if outside_root(p.topic, root)]
    if outside:
        warnings.lines.append(
            f"topic {outside[0]} is outside the fleet policy's topic root {root}/: "
            "AWS IoT will disconnect clients that publish there"
        )
    return publishers, shared


def check_report_path(path: Path | None) -> None:
    """Refuse an unwritable --report before the run, not after it."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"--report {path}: the directory {path.parent} does not exist")


async def run_send(
    settings: Settings,
    request: SendRequest,
    stop: StopSignal,
    *,
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None,
    warn: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run one send and return its report (also written to `request.report` when given).

    Installs no signal handlers: `stop` is the caller's.
    """
    settings, stack = localstack.resolve(settings)
    with Ledger.open(settings.state_dir) as ledger:
        warnings = Warnings()
        publishers, shared = build_publishers(request, ledger, settings.state_dir, warnings)
        for line in warnings.lines:
            warn(line)
        local = (stack.mqtt_host, stack.mqtt_port, stack.ca_file) if stack else None
        endpoint = await resolve_endpoint(settings, ledger, request.connect, local=local)
        fleet_id = ledger.meta().get("fleet_id")
    connector = Connector(
        endpoint,
        rate=request.connect.connect_per_s(),
        timeout=request.connect.connect_timeout,
        retries=request.connect.connect_retries,
        max_inflight=request.max_inflight,
    )
    sender = Sender(
        publishers,
        connector,
        shared,
        drain=parse_duration(request.drain, what="--drain"),
        on_tick=on_tick,
    )
    result = await sender.run(stop)
    report = send_report(
        result,
        options=request.as_options(),
        fleet_id=fleet_id,
        endpoint=endpoint,
        qos=request.qos,
    )
    if request.report is not None:
        write_report(request.report, report)
    return report
