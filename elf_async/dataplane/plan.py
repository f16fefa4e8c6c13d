"""A send's plan (every thing's identity, topic, schedule; the payload; QoS and window) and
how to connect: all a sending process needs. Both pickle, so `send --workers` processes share
them; `send_here` runs a plan on the running event loop (`sender_for` builds its `Sender`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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


@dataclass(frozen=True)
class SendPlan:
    """Every thing's topic, payload and schedule, checked; it pickles, so workers share it."""

    things: list[ThingPlan]
    spec: PayloadSpec
    qos: int
    window: int  # QoS 1 messages in flight per client
    shape: ShapePlan | None = None  # --stages, --churn, --storm
    publish5: Publish5 | None = None  # MQTT 5: what every PUBLISH carries

    @property
    def target_per_s(self) -> float:
        return sum(t.schedule.rate for t in self.things if t.schedule.total)

    def publishers(self, shared: Shared) -> list[Publisher]:
        """The publishers of this plan (on the running event loop)."""
        publishers = [self._publisher(t, shared) for t in self.things]
        if self.publish5 is not None:
            for p in publishers:
                p.publish5 = self.publish5
        return publishers

    def _publisher(self, t: ThingPlan, shared: Shared) -> Publisher:
        encode = self.spec.encoder(t.identity.name)
        if isinstance(t.schedule, StagedSchedule):
            staged = StagedPublisher(
                t.identity,
                t.topic,
                t.schedule,
                encode,
                qos=self.qos,
                window=self.window,
                shared=shared,
            )
            staged.staged = t.schedule
            return staged
        return Publisher(
            t.identity,
            t.topic,
            t.schedule,
            encode,
            qos=self.qos,
            window=self.window,
            shared=shared,
        )


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
