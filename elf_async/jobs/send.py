"""A `send` from options to report: check every option before connecting anything, plan each
thing's topic, payload and schedule, run the `Sender` (or `--workers` processes of it), write
the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.config import Settings
from elf_async.controlplane.fleet import per_thing_topics
from elf_async.controlplane.ledger import Ledger
from elf_async.dataplane.options import AWS_MAX_INFLIGHT, AWS_PUBLISH_PER_S, ConnectOptions
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, SendSetup, ThingPlan, send_here
from elf_async.dataplane.schedule import plan
from elf_async.dataplane.sender import Snapshot
from elf_async.dataplane.topics import TopicTemplate, outside_policy
from elf_async.errors import UsageError
from elf_async.jobs.target import ready_identities, resolve_endpoint
from elf_async.jobs.workers import send_in_workers
from elf_async.local import stack as localstack
from elf_async.report.document import SendTally, send_report, write_report
from elf_async.stopping import StopSignal
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
    workers: int = 1

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


def plan_send(
    request: SendRequest, ledger: Ledger, state_dir: Path, warnings: Warnings
) -> SendPlan:
    """Every option checked, every thing's topic, payload and schedule ready."""
    if request.workers < 1:
        raise UsageError(f"--workers {request.workers}: must be at least 1")
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
    things = [
        ThingPlan(identity, template.check(identity.name, identity.index), schedule)
        for identity, schedule in zip(identities, schedules, strict=True)
    ]
    per_thing = per_thing_topics(meta)
    outside = [
        t.topic
        for t in things
        if outside_policy(t.topic, root, thing=t.identity.name if per_thing else None)
    ]
    if outside:
        warnings.lines.append(policy_warning(outside[0], root, per_thing=per_thing))
    return SendPlan(things, spec, qos=request.qos, window=request.max_inflight)


def policy_warning(topic: str, root: str, *, per_thing: bool) -> str:
    """One line for a topic outside what the fleet's policy allows its client."""
    allowed = f"{root}/<client's thing name> and below" if per_thing else f"{root}/ and below"
    hint = "; `create --shared-topics` opens the whole root" if per_thing else ""
    return (
        f"topic {topic} is outside the fleet policy ({allowed}{hint}): AWS IoT disconnects "
        "a client that publishes there and refuses the subscription"
    )


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
        send_plan = plan_send(request, ledger, settings.state_dir, warnings)
        for line in warnings.lines:
            warn(line)
        local = (stack.mqtt_host, stack.mqtt_port, stack.ca_file) if stack else None
        endpoint = await resolve_endpoint(settings, ledger, request.connect, local=local)
        fleet_id = ledger.meta().get("fleet_id")
    setup = SendSetup(
        endpoint=endpoint,
        connect_per_s=request.connect.connect_per_s(),
        connect_timeout=request.connect.connect_timeout,
        connect_retries=request.connect.connect_retries,
        keepalive=request.connect.keepalive,
        drain=parse_duration(request.drain, what="--drain"),
    )
    if request.workers == 1:
        result = SendTally.of(await send_here(send_plan, setup, stop, on_tick=on_tick))
    else:
        result = await send_in_workers(
            send_plan, setup, request.workers, stop, on_tick=on_tick, verbose=settings.verbose
        )
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
