"""A `send` from options to report: plan each thing's topic, payload and schedule against the
fleet, run the `Sender` (or `--workers` processes of it), build the report (the command writes
it). The options come parsed and checked from the command line (elf_async.cli._options)."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async import statelock
from elf_async.config import check_region, resolve_target
from elf_async.controlplane import cloudwatch
from elf_async.controlplane.aws import configured_region
from elf_async.controlplane.certs import thing_files
from elf_async.controlplane.fleet import (
    THING_IDENTITY,
    controller_name,
    identity_mode,
    per_thing_topics,
    recorded_shard,
)
from elf_async.controlplane.ledger import SHARED_STEPS, Ledger
from elf_async.dataplane.commands import CommandPlan, CommandTally, send_with_commands
from elf_async.dataplane.connections import Identity
from elf_async.dataplane.mqtt5 import PROTOCOL_LEVEL, Publish5
from elf_async.dataplane.options import (
    ConnectOptions,
    Qos,
    check_account_publish_rate,
    check_publish_rate,
    check_send_length,
)
from elf_async.dataplane.payload import PayloadSpec, Replay, build_spec
from elf_async.dataplane.plan import (
    GroupPlan,
    SendPlan,
    SendSetup,
    ThingPlan,
    fleet_slices,
    send_here,
)
from elf_async.dataplane.schedule import ThingSchedule, plan
from elf_async.dataplane.sender import Snapshot
from elf_async.dataplane.shape import Shape, ShapePlan, Stage, StagedSchedule
from elf_async.dataplane.topics import TopicTemplate, outside_policy
from elf_async.errors import RuntimeFailure, UsageError
from elf_async.fdlimit import check_connections
from elf_async.jobs.live_metrics import LiveMetrics
from elf_async.jobs.target import Aim, ready_identities, resolve_endpoint
from elf_async.jobs.workers import StartAt, monotonic_at, send_in_workers
from elf_async.report.document import (
    GroupRow,
    SendTally,
    aws_metrics,
    scenario_section,
    send_report,
    sharding,
)
from elf_async.report.model import AwsMetrics, SendReport
from elf_async.shards import Shard
from elf_async.stopping import StopSignal


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOptions:
    """`send`'s options, parsed and checked where the user gave them: rates in messages per
    second, times in seconds, sizes in bytes. `as_given` is what the user typed, for the
    report's `options`."""

    message: str | None
    things: int | None
    rate: float  # messages/s per thing, or for all things together with `rate_is_total`
    rate_is_total: bool  # --total-rate: spread evenly over the things
    duration: float | None  # None when `count` is given
    count: int | None  # messages per thing
    qos: Qos
    topic: str | None
    append_thing_name: bool
    json_message: Path | None
    payload_template: str | None
    payload_size: int | None
    stamp: bool | None
    max_inflight: int
    drain: float
    connect: ConnectOptions
    workers: int
    cloudwatch: bool  # read AWS/IoT's counts for the run's window afterwards
    cloudwatch_wait: float | None  # seconds to let them arrive (None: the target's default)
    as_given: Mapping[str, Any]
    shard: Shard | None = None  # else the shard the state dir was created as, if any
    start_at: float | None = None  # epoch seconds; None: as soon as connected
    stages: tuple[Stage, ...] | None = None  # --stages (then `duration` is their length)
    churn_per_s: float | None = None  # --churn: share of the connected devices per second
    storm_at: float | None = None  # --storm: seconds into the schedule
    commands: float | None = None  # --commands: commands/s across the fleet; None: none
    publish5: Publish5 | None = None  # MQTT 5 (--mqtt 5): what every PUBLISH carries
    replay: Replay | None = None  # --payload-file's lines, read and checked
    scenario: Path | None = None  # --scenario's file
    groups: tuple[SendGroup, ...] = ()  # the scenario's groups (none: one group, these options)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendGroup:
    """A scenario's group: a contiguous slice of the fleet's things, `share` of them (a
    fraction) or `things` of them, sending with its own `options`."""

    name: str
    share: float | None
    things: int | None
    options: SendOptions


CLOUDWATCH_WAIT_S = 180.0  # AWS/IoT publishes a minute's sums a minute or two after it ends


@dataclass
class Warnings:
    """Things worth telling the user that do not stop the run."""

    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShardSlice:
    """The things a command uses: a shard's slice of its fleet, or a whole fleet."""

    things: list[Identity]
    shard: Shard | None
    fleet_size: int  # the whole fleet's things, every shard's


def effective_shard(shard: Shard | None, meta: Mapping[str, str]) -> Shard | None:
    """--shard (or the array job's environment), else the shard the state dir was created as;
    the two must agree."""
    recorded = recorded_shard(meta)
    if recorded is not None and shard is not None and recorded[0] != shard:
        raise UsageError(
            f"this state dir holds shard {recorded[0]} of fleet {meta.get('fleet_id')}, "
            f"not --shard {shard}"
        )
    return shard if recorded is None else recorded[0]


def shard_slice(
    identities: list[Identity], shard: Shard | None, meta: Mapping[str, str]
) -> ShardSlice:
    """The ready things `shard` owns: --shard (or the array job's environment) against the
    shard the state dir was created as; a state dir holding a whole fleet is sliced as given."""
    chosen = effective_shard(shard, meta)
    if chosen is None:
        return ShardSlice(identities, None, len(identities))
    recorded = recorded_shard(meta)
    fleet_size = recorded[1] if recorded else len(identities)
    owned = chosen.indexes(fleet_size)
    mine = [i for i in identities if i.index in owned]
    if not mine:
        raise UsageError(
            f"shard {chosen} owns no ready thing here (indexes {owned.start} to "
            f"{owned.stop - 1} of {fleet_size})"
        )
    return ShardSlice(mine, chosen, fleet_size)


def _per_thing_rate(options: SendOptions, things: int) -> float:
    """Messages per second per thing; --total-rate's share is checked against AWS's limit and
    --count's length once the fleet says how many things share it (--rate was checked where it
    was parsed). A shard's --total-rate is the whole fleet's, like its other budgets."""
    if not options.rate_is_total:
        return options.rate
    rate = options.rate / things
    check_publish_rate(rate, allow_over_aws_limits=options.connect.allow_over_aws_limits)
    check_send_length(options.count, rate)
    return rate


def plan_send(
    options: SendOptions, ledger: Ledger, state_dir: Path, warnings: Warnings
) -> tuple[SendPlan, Shard | None]:
    """Every thing's topic, payload and schedule ready, checked against the fleet; the shard
    it is (given, or as the state dir was created), if any. A scenario's groups each plan
    their slice of the fleet with their own options (`_groups`)."""
    meta = ledger.meta()
    sliced = shard_slice(
        ready_identities(ledger, state_dir, count=options.things), options.shard, meta
    )
    # A thing's place in the fleet the send uses: its index in a shard's fleet, else its
    # place among the ready things (`plan`'s phases and a round robin's lines follow it).
    places = [i.index for i in sliced.things] if sliced.shard else range(len(sliced.things))
    parts = _groups(options, sliced, places) if options.groups else None
    if parts is None:
        size = sliced.fleet_size
        shape = shape_plan(options, _per_thing_rate(options, size), size)
        staged = None if shape is None else shape.shape
        things, spec, rate = _plan_part(options, meta, sliced.things, places, size, shape=staged)
        total = rate * len(things)
        send_plan = SendPlan(
            things,
            spec,
            qos=options.qos,
            window=options.max_inflight,
            shape=shape,
            publish5=options.publish5,
        )
    else:
        shaped = options.churn_per_s is not None or options.storm_at is not None
        shaped = shaped or any(g.options.stages for g in options.groups)
        things, groups, total, shapes = [], [], 0.0, []
        for number, (group, identities, where, size) in enumerate(parts):
            mine_shape = _group_shape(options, group, size) if shaped else None
            mine, spec, rate = _plan_part(
                group.options, meta, identities, where, size, number, shape=mine_shape
            )
            things += mine
            total += rate * len(mine)
            window = group.options.max_inflight
            groups.append(GroupPlan(group.name, spec, group.options.qos, window))
            if mine_shape is not None:
                shapes.append((group.name, mine_shape))
        send_plan = SendPlan(
            things,
            groups[0].spec,
            qos=max(g.qos for g in groups),
            window=max(g.window for g in groups),
            shape=_groups_shape_plan(options, shapes),
            groups=tuple(groups),
            publish5=options.publish5,
        )
    check_account_publish_rate(
        total,
        shards=sliced.shard.count if sliced.shard else 1,
        allow_over_aws_limits=options.connect.allow_over_aws_limits,
    )
    root = meta.get("topic_root") or "elf"
    per_thing = per_thing_topics(meta)
    shadows = identity_mode(meta) == THING_IDENTITY  # a shared identity has no things
    outside = [
        t.topic
        for t in send_plan.things
        if outside_policy(
            t.topic, root, thing=t.identity.name, shared=not per_thing, shadows=shadows
        )
    ]
    if outside:
        warnings.lines.append(policy_warning(outside[0], root, per_thing=per_thing))
    return send_plan, sliced.shard


def _plan_part(
    options: SendOptions,
    meta: Mapping[str, str],
    identities: list[Identity],
    places: Sequence[int],
    size: int,
    group: int = 0,
    *,
    shape: Shape | None = None,
) -> tuple[list[ThingPlan], PayloadSpec, float]:
    """The plans of `identities` (at `places` of `size` things: the send's, or a group's),
    their payload and their rate per thing, with `options` (and the stages of `shape`)."""
    template = topic_template(options.topic, options.append_thing_name, meta)
    replay = options.replay
    spec = build_spec(
        message=options.message,
        json_message=options.json_message,
        template=options.payload_template,
        size=options.payload_size,
        stamp=options.stamp,
        replay=None if replay is None else dataclasses.replace(replay, things=size),
    )
    rate = _per_thing_rate(options, size)
    schedules: Sequence[ThingSchedule | StagedSchedule]
    if shape is not None:
        schedules = [shape.schedule(place, size) for place in places]
        if identities:  # the busiest stage's share of these things, as a constant rate
            busiest = max(max(s.rate) * min(max(s.devices), len(identities)) for s in shape.stages)
            rate = busiest / len(identities)
    else:
        schedules = plan(
            len(identities),
            rate,
            duration=options.duration,
            count=options.count,
            indexes=places,
            fleet=size,
        )
    if identities:
        longest = max(identities, key=lambda i: len(i.name)).name
        spec.check(longest, max(s.total for s in schedules))
    things = [
        ThingPlan(identity, template.check(identity.name, identity.index), schedule, at, group)
        for identity, schedule, at in zip(identities, schedules, places, strict=True)
    ]
    return things, spec, rate


def topic_template(
    topic: str | None, append_thing_name: bool, meta: Mapping[str, str], *, filter: bool = False
) -> TopicTemplate:
    """--topic (default ``<root>/{thing}``), with /{thing} appended by --append-thing-name."""
    text = topic
    if text is None:  # an empty --topic is refused, not taken for the default
        text = f"{meta.get('topic_root') or 'elf'}/{{thing}}"
    if append_thing_name:
        text = text.rstrip("/") + "/{thing}"
    return TopicTemplate(text, fleet=meta.get("fleet_id", ""), filter=filter)


def shape_plan(options: SendOptions, rate: float, fleet: int) -> ShapePlan | None:
    """The stages (or, for --churn/--storm alone, one stage holding the whole fleet at --rate
    for --duration), checked against the fleet's size."""
    if options.stages is None and options.churn_per_s is None and options.storm_at is None:
        return None
    stages = options.stages or (Stage(options.duration or 0.0, (fleet, fleet), (rate, rate)),)
    shape = Shape(stages)
    if shape.max_devices > fleet:
        raise UsageError(
            f"--stages: a stage has {shape.max_devices} devices, the fleet {fleet} ready things"
        )
    seed = random.randrange(1 << 31)
    return ShapePlan(shape, options.churn_per_s, options.storm_at, seed)


def _group_shape(options: SendOptions, group: SendGroup, size: int) -> Shape:
    """A group's stages in a shaped send (a group's own `stages`, else the run's), planned
    over its `size` things; a group with neither holds all its things at its rate for its
    duration."""
    mine = group.options
    where = f"--scenario {options.scenario}: group {group.name!r}"
    if mine.stages is None and mine.duration is None:
        raise UsageError(
            f"{where}: next to stages, --churn or --storm a group sends for a duration, not a "
            "count (give it stages or a duration)"
        )
    rate = _per_thing_rate(mine, size)
    shape = Shape(mine.stages or (Stage(mine.duration or 0.0, (size, size), (rate, rate)),))
    if shape.max_devices > size:
        raise UsageError(
            f"{where}: stages: a stage has {shape.max_devices} devices, the group {size} things"
        )
    return shape


def _groups_shape_plan(
    options: SendOptions, shapes: Sequence[tuple[str, Shape]]
) -> ShapePlan | None:
    """The shaped send of a scenario's groups (none if no group is shaped): the churn and
    the storm act on every group's devices; the longest group's shape is the run's length."""
    if not shapes:
        return None
    longest = max((shape for _, shape in shapes), key=lambda shape: shape.span)
    seed = random.randrange(1 << 31)
    return ShapePlan(longest, options.churn_per_s, options.storm_at, seed, groups=tuple(shapes))


def command_plan(rate: float, ledger: Ledger, state_dir: Path) -> CommandPlan:
    """--commands: the rate and the fleet's controller identity (`create --controller`)."""
    meta = ledger.meta()
    name = controller_name(meta.get("prefix", ""))
    try:
        ready = ledger.thing(name).ready_for(SHARED_STEPS)
    except KeyError:
        ready = False
    key_file, cert_file = thing_files(state_dir, name)
    if not ready or not (key_file.is_file() and cert_file.is_file()):
        raise UsageError(
            "--commands needs the fleet's command controller identity: run "
            "`elf-async create --controller` first"
        )
    return CommandPlan(
        rate=rate,
        topic_root=meta.get("topic_root") or "elf",
        controller=Identity(name, -1, key_file, cert_file),
    )


def _groups(
    options: SendOptions, sliced: ShardSlice, places: Sequence[int]
) -> list[tuple[SendGroup, list[Identity], list[int], int]]:
    """Each group's things (contiguous places of the send's fleet), their places in the
    group and the group's size."""
    size = sliced.fleet_size if sliced.shard else len(sliced.things)
    counts = [g.things for g in options.groups]
    if all(count is not None for count in counts):
        wanted = sum(count or 0 for count in counts)
        if wanted != size:
            raise UsageError(
                f"--scenario {options.scenario}: its groups have {wanted} things, the send "
                f"uses {size} (--things, or the fleet's ready things)"
            )
        shares = [(count or 0) / size for count in counts]
    else:
        shares = [g.share or 0.0 for g in options.groups]
    parts = []
    for group, span in zip(options.groups, fleet_slices(size, shares), strict=True):
        if not span:
            raise UsageError(
                f"--scenario {options.scenario}: group {group.name!r}: a share of "
                f"{group.share:g} of {size} things is no thing"
            )
        mine = [(i, p) for i, p in zip(sliced.things, places, strict=True) if p in span]
        where = [p - span.start for _, p in mine]
        parts.append((group, [i for i, _ in mine], where, len(span)))
    return parts


def _group_rows(send_plan: SendPlan) -> list[GroupRow]:
    """Each group's name, QoS, rate per thing, things and planned messages."""
    rows = [GroupRow(g.name, g.qos) for g in send_plan.groups]
    for t in send_plan.things:
        row = rows[t.group]
        row.things.add(t.identity.name)
        row.planned += t.schedule.total
        row.per_thing_per_s = t.schedule.rate
    return rows


def policy_warning(topic: str, root: str, *, per_thing: bool) -> str:
    """One line for a topic outside what the fleet's policy allows its client."""
    allowed = f"{root}/<client's thing name> and below" if per_thing else f"{root}/ and below"
    hint = "; `create --shared-topics` opens the whole root" if per_thing else ""
    return (
        f"topic {topic} is outside the fleet policy ({allowed}, and the client's own thing's "
        f"shadow topics{hint}): AWS IoT disconnects a client that publishes there and refuses "
        "the subscription"
    )


async def run_send(
    aimed: Aim,
    options: SendOptions,
    stop: StopSignal,
    *,
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None,
    warn: Callable[[str], None] = lambda line: None,
    metrics: LiveMetrics | None = None,
    start: StartAt | None = None,
) -> SendReport:
    """Run one send and return its report; `metrics` (--metrics-port) sees every tick and,
    at the end, the report's figures. `start` is an engine's start instant (a cluster
    driver's broadcast, `StartAt.broadcast`) instead of --start-at.

    Installs no signal handlers: `stop` is the caller's.
    """
    state_dir = aimed.settings.state_dir
    # Shared: never while a create or clean changes the fleet, but next to other readers.
    with statelock.hold(state_dir, shared=True), Ledger.open(state_dir) as ledger:
        check_region(aimed.settings, ledger.meta())
        warnings = Warnings()
        send_plan, shard = plan_send(options, ledger, state_dir, warnings)
        commands = (
            None if options.commands is None else command_plan(options.commands, ledger, state_dir)
        )
        things = len(send_plan.things)
        # Each process holds its share of the connections (the parent none with --workers).
        check_connections(-(-things // min(options.workers, things)), what="the send")
        for line in warnings.lines:
            warn(line)
        endpoint = await resolve_endpoint(aimed, ledger, options.connect)
        meta = ledger.meta()
        identity = identity_mode(meta)
    fleet_id = meta.get("fleet_id")
    if metrics is not None:
        metrics.for_fleet(fleet_id, shard)
        shown = on_tick

        def on_tick(snapshot: Snapshot) -> None:
            metrics.observe_send(snapshot)
            shown(snapshot)

    setup = SendSetup(
        endpoint=endpoint,
        connect_per_s=options.connect.connect_per_s,
        connect_timeout=options.connect.connect_timeout,
        connect_retries=options.connect.connect_retries,
        keepalive=options.connect.keepalive,
        drain=options.drain,
        protocol=PROTOCOL_LEVEL[options.connect.mqtt_version],
    )
    if start is None and options.start_at is not None:
        start = StartAt(options.start_at)
    command_tally: CommandTally | None = None
    if options.workers == 1:
        clock = None if start is None else monotonic_at(start.origin)
        go = None if start is None else functools.partial(start.wait, stop)
        if commands is None:
            sent = await send_here(send_plan, setup, stop, on_tick=on_tick, clock=clock, go=go)
        else:
            sent, command_tally = await send_with_commands(
                send_plan, setup, commands, stop, on_tick=on_tick, clock=clock, go=go
            )
        result = SendTally.of(sent)
    else:
        result = await send_in_workers(
            send_plan,
            setup,
            options.workers,
            stop,
            on_tick=on_tick,
            verbose=aimed.settings.verbose,
            start=start,
        )
    if metrics is not None:
        metrics.conclude_send(result)
    report = send_report(
        result,
        options=dict(options.as_given),
        fleet_id=fleet_id,
        endpoint=endpoint,
        qos=send_plan.qos,
        mqtt_version=options.connect.mqtt_version,
        placement=sharding(
            shard=shard,
            start_at=start.at if start else None,
            late_start_s=start.late_s if start else 0.0,
        ),
        commands=command_tally,
    )
    report["fleet"]["identity"] = identity
    if send_plan.groups:
        report["scenario"] = scenario_section(
            report["things"], file=str(options.scenario), groups=_group_rows(send_plan)
        )
    if options.cloudwatch:
        wait = options.cloudwatch_wait
        if wait is None:
            wait = 0.0 if aimed.stack is not None else CLOUDWATCH_WAIT_S
        report["aws_metrics"] = await _cross_check(aimed, meta, report, result, wait, stop, warn)
    return report


async def _cross_check(
    aimed: Aim,
    meta: dict[str, str],
    report: SendReport,
    result: SendTally,
    wait: float,
    stop: StopSignal,
    warn: Callable[[str], None],
) -> AwsMetrics:
    """AWS/IoT's CloudWatch sums over the run's whole minutes, read `wait` seconds after the
    run (a stop cuts the wait short). A failure to read them is said in the report and as a
    warning: it does not undo the run."""
    waited = 0.0
    if wait > 0 and not stop.event.is_set():
        warn(f"waiting {wait:g}s for AWS/IoT's one-minute CloudWatch metrics (--cloudwatch-wait)")
        began = time.monotonic()
        await stop.sleep(wait)
        waited = time.monotonic() - began
    start, end = cloudwatch.window(result.started_at, result.ended_at)
    sums: dict[str, float | None] = {}
    error = None
    try:
        target = resolve_target(
            aimed.settings, meta, configured_region=configured_region(aimed.settings.profile)
        )
        sums = await cloudwatch.iot_sums(target, start=start, end=end)
    except RuntimeFailure as exc:
        error = str(exc)
        warn(f"--cloudwatch: {error}")
    return aws_metrics(report, sums, start=start, end=end, waited_s=waited, error=error)
