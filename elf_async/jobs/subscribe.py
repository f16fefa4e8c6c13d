"""A `subscribe` from options to report: check the options, pair each watched thing's topic
with a subscribing identity, run the `Subscriber`, write the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.config import Settings
from elf_async.controlplane.fleet import per_thing_topics
from elf_async.controlplane.ledger import Ledger
from elf_async.dataplane.connections import Connector
from elf_async.dataplane.options import ConnectOptions
from elf_async.dataplane.subscriber import Subscriber, Watch
from elf_async.dataplane.topics import TopicTemplate, outside_policy
from elf_async.errors import UsageError
from elf_async.jobs.send import DEFAULT_DURATION, Warnings, check_report_path, policy_warning
from elf_async.jobs.target import ready_identities, resolve_endpoint
from elf_async.local import stack as localstack
from elf_async.report.document import subscribe_report, write_report
from elf_async.stopping import StopSignal
from elf_async.units import parse_duration


@dataclass(frozen=True)
class SubscribeRequest:
    """`subscribe`'s options as given."""

    things: int | None = None
    client_offset: int = 0
    topic: str | None = None
    append_thing_name: bool = False
    qos: int = 1
    duration: str | None = None
    report: Path | None = None
    connect: ConnectOptions = field(default_factory=ConnectOptions)

    def as_options(self) -> dict[str, Any]:
        options = dataclasses.asdict(self)
        options["report"] = str(self.report) if self.report else None
        options["connect"]["ca_file"] = str(self.connect.ca_file) if self.connect.ca_file else None
        return options


def build_watches(
    request: SubscribeRequest, ledger: Ledger, state_dir: Path, warnings: Warnings
) -> list[Watch]:
    if request.qos not in (0, 1):
        raise UsageError(f"--qos {request.qos}: AWS IoT supports QoS 0 and 1 only")
    if request.client_offset < 0:
        raise UsageError("--client-offset must be 0 or more")
    parse_duration(request.duration or DEFAULT_DURATION, what="--duration")
    check_report_path(request.report)
    request.connect.connect_per_s()
    meta = ledger.meta()
    root = meta.get("topic_root") or "elf"
    template_text = request.topic or f"{root}/{{thing}}"
    if request.append_thing_name:
        template_text = template_text.rstrip("/") + "/{thing}"
    template = TopicTemplate(template_text, fleet=meta.get("fleet_id", ""), filter=True)
    count = request.things
    if count is None and request.client_offset:
        count = request.client_offset  # watch the things a send next to us is using
    watched = ready_identities(ledger, state_dir, count=count)
    clients = ready_identities(ledger, state_dir, count=len(watched), offset=request.client_offset)
    watches = [
        Watch(identity=client, topic=template.check(thing.name, thing.index))
        for thing, client in zip(watched, clients, strict=True)
    ]
    per_thing = per_thing_topics(meta)
    outside = [
        w.topic
        for w in watches
        if outside_policy(w.topic, root, thing=w.identity.name if per_thing else None)
    ]
    if outside:  # e.g. --client-offset under a per-thing policy: watching another's topic
        warnings.lines.append(policy_warning(outside[0], root, per_thing=per_thing))
    return watches


async def run_subscribe(
    settings: Settings,
    request: SubscribeRequest,
    stop: StopSignal,
    *,
    on_message: Callable[[str, bytes | bytearray], None] = lambda topic, payload: None,
    on_tick: Callable[[dict[str, Any]], None] = lambda row: None,
    warn: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run one subscribe and return its report (also written to `request.report`)."""
    settings, stack = localstack.resolve(settings)
    with Ledger.open(settings.state_dir) as ledger:
        warnings = Warnings()
        watches = build_watches(request, ledger, settings.state_dir, warnings)
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
        keepalive=request.connect.keepalive,
    )
    subscriber = Subscriber(
        watches,
        connector,
        qos=request.qos,
        duration=parse_duration(request.duration or DEFAULT_DURATION, what="--duration"),
        on_message=on_message,
        on_tick=on_tick,
    )
    result = await subscriber.run(stop)
    report = subscribe_report(
        result,
        options=request.as_options(),
        fleet_id=fleet_id,
        endpoint=endpoint,
        qos=request.qos,
    )
    if request.report is not None:
        write_report(request.report, report)
    return report
