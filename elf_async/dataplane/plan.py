"""A send's plan (every thing's identity, topic, schedule; the payload; QoS and window) and
how to connect: all a sending process needs. Both pickle, so `send --workers` processes share
them; `send_here` runs a plan on the running event loop (`sender_for` builds its `Sender`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.lifecycle import Lifecycle, StagedPublisher
from elf_async.dataplane.mqtt5 import Publish5
from elf_async.dataplane.payload import PayloadSpec
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.dataplane.sender import Publisher, Sender, SendResult, Shared, Snapshot
from elf_async.dataplane.shape import ShapePlan, StagedSchedule
from elf_async.dataplane.takeover import Takeover
from elf_async.stopping import StopSignal


@dataclass(frozen=True, slots=True)
class ThingPlan:
    """One thing's part of the run."""

    identity: Identity
    topic: str
    schedule: ThingSchedule | StagedSchedule
    position: int = 0  # its place among the things a --payload-file's round robin spreads over
    group: int = 0  # its group in `SendPlan.groups`, if any


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """What a scenario's group sends unlike the others: its payload, QoS and window."""

    name: str
    spec: PayloadSpec
    qos: int
    window: int


@dataclass(frozen=True)
class SendPlan:
    """Every thing's topic, payload and schedule, checked; it pickles, so workers share it.
    With a scenario's `groups`, each thing's payload, QoS and window are its group's (`qos`
    and `window` are then the largest)."""

    things: list[ThingPlan]
    spec: PayloadSpec
    qos: int
    window: int  # QoS 1 messages in flight per client
    shape: ShapePlan | None = None  # --stages, --churn, --storm
    publish5: Publish5 | None = None  # MQTT 5: what every PUBLISH carries
    groups: tuple[GroupPlan, ...] = ()

    @property
    def target_per_s(self) -> float:
        return sum(t.schedule.rate for t in self.things if t.schedule.total)

    def publishers(self, shared: Shared) -> list[Publisher]:
        """The publishers of this plan (on the running event loop)."""
        whole = GroupPlan("", self.spec, self.qos, self.window)
        publishers = [
            self._publisher(t, self.groups[t.group] if self.groups else whole, shared)
            for t in self.things
        ]
        if self.publish5 is not None:
            for p in publishers:
                p.publish5 = self.publish5
        return publishers

    def _publisher(self, t: ThingPlan, group: GroupPlan, shared: Shared) -> Publisher:
        kind = StagedPublisher if isinstance(t.schedule, StagedSchedule) else Publisher
        publisher = kind(
            t.identity,
            t.topic,
            t.schedule,
            group.spec.encoder(t.identity.name, t.position),
            qos=group.qos,
            window=group.window,
            shared=shared,
        )
        if isinstance(publisher, StagedPublisher) and isinstance(t.schedule, StagedSchedule):
            publisher.staged = t.schedule
        return publisher


def fleet_slices(size: int, shares: Sequence[float]) -> list[range]:
    """Contiguous slices of `size` things, in order, each about its share of them (the
    shares add up to 1), rounded so that together they are exactly the `size` things: the
    largest remainders get the things left over."""
    ideal = [share * size for share in shares]
    counts = [math.floor(x + 1e-9) for x in ideal]
    left = size - sum(counts)
    for i in sorted(range(len(ideal)), key=lambda i: counts[i] - ideal[i])[: max(left, 0)]:
        counts[i] += 1
    slices, start = [], 0
    for count in counts:
        slices.append(range(start, start + count))
        start += count
    return slices


@dataclass(frozen=True)
class SendSetup:
    """How to connect and drain: what a sending process needs besides its plan."""

    endpoint: Endpoint
    connect_per_s: float
    connect_timeout: float
    connect_retries: int
    keepalive: int
    drain: float
    protocol: int = 4  # paho's MQTTv311; 5: MQTT 5


async def send_here(
    send_plan: SendPlan,
    setup: SendSetup,
    stop: StopSignal,
    *,
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None,
    clock: float | None = None,
    go: Callable[[], Awaitable[float]] | None = None,
) -> SendResult:
    """The plan's things sent from this process's event loop (`clock`, `go`: see `Sender`)."""
    return await sender_for(send_plan, setup, on_tick=on_tick, clock=clock, go=go).run(stop)


def sender_for(
    send_plan: SendPlan,
    setup: SendSetup,
    *,
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None,
    clock: float | None = None,
    go: Callable[[], Awaitable[float]] | None = None,
    shared: Shared | None = None,
) -> Sender:
    """The `Sender` of a plan, on the running event loop (`clock`, `go`: see `Sender`;
    `shared`: histograms the caller wants to watch)."""
    connector = Connector(
        setup.endpoint,
        rate=setup.connect_per_s,
        timeout=setup.connect_timeout,
        retries=setup.connect_retries,
        keepalive=setup.keepalive,
        max_inflight=send_plan.window,
        protocol=setup.protocol,
    )
    shared = Shared() if shared is None else shared
    publishers = send_plan.publishers(shared)
    takeover = Takeover()
    shaped = None
    if send_plan.shape is not None:
        shaped = Lifecycle(send_plan.shape, connector, takeover, drain=setup.drain)
        shaped.adopt(publishers)
    return Sender(
        publishers,
        connector,
        shared,
        drain=setup.drain,
        on_tick=on_tick,
        clock=clock,
        go=go,
        takeover=takeover,
        shaped=shaped,
    )
