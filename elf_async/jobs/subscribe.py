"""A `subscribe` from options to report: pair each watched thing's topic with a subscribing
identity, run the `Subscriber`, build the report (the command writes it). The options come
parsed and checked from the command line (elf_async.cli._options)."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elf_async import statelock
from elf_async.config import check_region
from elf_async.controlplane.fleet import (
    THING_IDENTITY,
    allows_watch_ids,
    identity_mode,
    per_thing_topics,
    watch_client_id,
)
from elf_async.controlplane.ledger import Ledger
from elf_async.dataplane.connections import Connector
from elf_async.dataplane.mqtt5 import PROTOCOL_LEVEL, shared_filter
from elf_async.dataplane.options import ConnectOptions, Qos
from elf_async.dataplane.subscriber import Subscriber, Watch
from elf_async.dataplane.topics import outside_policy
from elf_async.errors import UsageError
from elf_async.fdlimit import check_connections
from elf_async.jobs.live_metrics import LiveMetrics
from elf_async.jobs.send import (
    Warnings,
    effective_shard,
    policy_warning,
    shard_slice,
    topic_template,
)
from elf_async.jobs.target import Aim, ready_identities, resolve_endpoint
from elf_async.report.document import sharding, subscribe_report
from elf_async.report.model import SubscribeReport
from elf_async.shards import Shard
from elf_async.stopping import StopSignal


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeOptions:
    """`subscribe`'s options, parsed and checked where the user gave them (times in seconds).
    `as_given` is what the user typed, for the report's `options`."""

    things: int | None
    client_offset: int | None  # None: watcher ids (`<thing>-watch`); N: as the things after N
    topic: str | None
    append_thing_name: bool
    qos: Qos
    duration: float
    connect: ConnectOptions
    as_given: Mapping[str, Any]
    shard: Shard | None = None  # else the shard the state dir was created as, if any
    start_at: float | None = None  # epoch seconds: listen until `duration` after it
    shared: str | None = None  # --shared GROUP: a member of a shared subscription group


OLD_POLICY = (
    "this fleet's policy predates watcher client ids: the subscribers connect as the things "
    "themselves, so a send on the same things takes their connections over (session takeover); "
    "--client-offset N connects as the things after the first N instead"
)


def build_watches(
    options: SubscribeOptions,
    ledger: Ledger,
    state_dir: Path,
    warnings: Warnings,
    *,
    any_client_id: bool = False,
) -> list[Watch]:
    """Each watched thing's topic filter with the identity that subscribes to it: by default
    the thing's certificate as `<thing>-watch` (the fleet policy allows it, or the broker lets
    `any_client_id` in), which a send as the thing cannot collide with."""
    meta = ledger.meta()
    root = meta.get("topic_root") or "elf"
    template = topic_template(options.topic, options.append_thing_name, meta, filter=True)
    count = options.things
    if count is None and options.client_offset:
        count = options.client_offset  # watch the things a send next to us is using
    sliced = shard_slice(ready_identities(ledger, state_dir, count=count), options.shard, meta)
    if sliced.shard is not None and options.client_offset is not None:
        raise UsageError(
            "--client-offset cannot be used on a shard: watchers connect as <thing>-watch"
        )
    watched = sliced.things
    if options.client_offset is not None:
        clients = ready_identities(
            ledger, state_dir, count=len(watched), offset=options.client_offset
        )
    elif allows_watch_ids(meta) or any_client_id:
        clients = [dataclasses.replace(t, alias=watch_client_id(t.name)) for t in watched]
    else:
        clients = watched
        warnings.lines.append(OLD_POLICY)
    watches = [
        Watch(identity=client, topic=template.check(thing.name, thing.index))
        for thing, client in zip(watched, clients, strict=True)
    ]
    per_thing = per_thing_topics(meta)
    outside = [  # a watcher may read the whole root
        w.topic
        for w in watches
        # A watcher (an alias client id) may read anything under the root, as a shared scope.
        if outside_policy(
            w.topic,
            root,
            thing=w.identity.name,
            shared=not per_thing or bool(w.identity.alias),
            shadows=identity_mode(meta) == THING_IDENTITY,
        )
    ]
    if outside:  # e.g. --client-offset under a per-thing policy: watching another's topic
        warnings.lines.append(policy_warning(outside[0], root, per_thing=per_thing))
    if options.shared is not None:
        return share(watches, options.shared)
    return watches


def share(watches: list[Watch], group: str) -> list[Watch]:
    """The watches as members of shared subscription `group`: each subscribes to
    ``$share/GROUP/<filter>``, and a watcher id becomes ``<thing>-GROUP-<member>-watch``, the
    member a random tag of this process: every process of the group connects with ids of its
    own (one id holds one connection), all within the fleet's watcher ids."""
    member = secrets.token_hex(3)
    return [
        dataclasses.replace(
            w,
            topic=shared_filter(group, w.topic),
            identity=dataclasses.replace(
                w.identity, alias=watch_client_id(f"{w.identity.name}-{group}-{member}")
            )
            if w.identity.alias
            else w.identity,
        )
        for w in watches
    ]


async def run_subscribe(
    aimed: Aim,
    options: SubscribeOptions,
    stop: StopSignal,
    *,
    on_message: Callable[[str, bytes | bytearray], None] = lambda topic, payload: None,
    on_tick: Callable[[dict[str, Any]], None] = lambda row: None,
    warn: Callable[[str], None] = lambda line: None,
    metrics: LiveMetrics | None = None,
) -> SubscribeReport:
    """Run one subscribe and return its report; `metrics` (--metrics-port) sees every tick
    and, at the end, the report's figures."""
    state_dir = aimed.settings.state_dir
    # Shared: never while a create or clean changes the fleet, but next to other readers.
    with statelock.hold(state_dir, shared=True), Ledger.open(state_dir) as ledger:
        check_region(aimed.settings, ledger.meta())
        warnings = Warnings()
        watches = build_watches(
            options, ledger, state_dir, warnings, any_client_id=aimed.stack is not None
        )
        for line in warnings.lines:
            warn(line)
        check_connections(len(watches), what="the subscribe")
        endpoint = await resolve_endpoint(aimed, ledger, options.connect)
        fleet_id = ledger.meta().get("fleet_id")
        identity = identity_mode(ledger.meta())
        shard = effective_shard(options.shard, ledger.meta())
    duration, late_start_s = options.duration, 0.0
    if options.start_at is not None:  # connected meanwhile; listening `duration` after it
        now = time.time()
        duration += max(0.0, options.start_at - now)
        late_start_s = max(0.0, now - options.start_at)
    connector = Connector(
        endpoint,
        rate=options.connect.connect_per_s,
        timeout=options.connect.connect_timeout,
        retries=options.connect.connect_retries,
        keepalive=options.connect.keepalive,
        protocol=PROTOCOL_LEVEL[options.connect.mqtt_version],
    )

    def tick(row: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.observe_subscribe(subscriber, row)
        on_tick(row)

    subscriber = Subscriber(
        watches,
        connector,
        qos=options.qos,
        duration=duration,
        on_message=on_message,
        on_tick=tick,
        group=options.shared,
    )
    if metrics is not None:
        metrics.for_fleet(fleet_id, shard)
    result = await subscriber.run(stop)
    if metrics is not None:
        metrics.conclude_subscribe(result)
    report = subscribe_report(
        result,
        options=dict(options.as_given),
        fleet_id=fleet_id,
        endpoint=endpoint,
        qos=options.qos,
        mqtt_version=options.connect.mqtt_version,
        placement=sharding(shard=shard, start_at=options.start_at, late_start_s=late_start_s),
    )
    report["fleet"]["identity"] = identity
    return report
