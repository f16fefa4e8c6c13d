"""Commands cloud to device (`send --commands RATE`): a controller and the devices' replies.

The controller connects with an identity of its own (`create --controller`: a certificate
whose policy publishes only to ``<root>/<device>/cmd`` and reads only the replies), subscribes
to ``<root>/+/cmd/reply`` and publishes commands at QoS 1 on an open-loop schedule: command
``k`` is due at ``start + k/rate``, to the fleet's devices in turn, whatever the broker does.
Each device subscribes to its ``<root>/<device>/cmd`` right after it connects (again after a
reconnect) and answers every command on ``<root>/<device>/cmd/reply`` with the command's own
payload (its id and stamp), at QoS 0 through paho: the publishing connection's Wire owns
its QoS 1 packet ids, and a QoS 0 PUBLISH carries none.

Counts: `due` by the schedule, `sent` (handed to the controller's connection), `delivered`
(received by a device), `replied` (the reply reached the controller), `lost` (sent, never
replied by the end of the drain); the round trip (reply received - command sent) in an HDR
histogram. The plain send is unchanged without --commands: the sender only calls its
`on_attach` hook and asks `pending` while it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from elf_async.dataplane.connections import Connector, Identity
from elf_async.dataplane.mqtt import ConnectFailed, Link
from elf_async.dataplane.plan import SendPlan, SendSetup, sender_for
from elf_async.dataplane.schedule import messages_in
from elf_async.dataplane.sender import Publisher, SendResult, Snapshot, schedule_span
from elf_async.metrics import Histogram
from elf_async.stopping import StopSignal

COMMAND_LEVEL = "cmd"
REPLY_LEVEL = "reply"
COMMAND_QOS = 1
REPLY_QOS = 0  # see the module's docstring: no packet id on the device's taken-over link


def command_topic(root: str, device: str) -> str:
    return f"{root.strip('/')}/{device}/{COMMAND_LEVEL}"


def reply_topic(root: str, device: str) -> str:
    return f"{command_topic(root, device)}/{REPLY_LEVEL}"


def reply_filter(root: str) -> str:
    return f"{root.strip('/')}/+/{COMMAND_LEVEL}/{REPLY_LEVEL}"


def command_payload(command: int) -> bytes:
    """Command `command`'s payload: its id and the epoch ms it was sent (the reply echoes it)."""
    return json.dumps({"id": command, "ts": int(time.time() * 1000)}).encode()


def command_id(payload: bytes | bytearray) -> int | None:
    """The id a reply echoes, or None for a payload that is not one of ours."""
    try:
        value = json.loads(payload)["id"]
    except (ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, int) else None


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """What `--commands` asks for: the rate across the fleet, the topic root and the
    controller's identity (its client id is its name). It pickles."""

    rate: float  # commands per second, across the fleet
    topic_root: str
    controller: Identity


@dataclass
class CommandTally:
    """A run's command counts, detached from the live objects (they pickle)."""

    rate: float
    due: int = 0
    sent: int = 0
    delivered: int = 0
    replied: int = 0
    round_trip: Histogram = field(default_factory=Histogram)
    error: str | None = None  # why the controller could not send (never connected, lost)

    @property
    def lost(self) -> int:
        return self.sent - self.replied


class Responder:
    """The devices' side: subscribe each connection to its command topic, reply to each
    command received. One per sending event loop."""

    def __init__(self, topic_root: str, *, within: float) -> None:
        self.topic_root = topic_root
        self.within = within
        self.delivered = 0
        self.refused: list[str] = []  # devices whose subscription failed, and why

    async def attach(self, publisher: Publisher) -> None:
        """The sender's `on_attach`: `publisher` has a new connection."""
        link = publisher.link
        if link is None or link.lost.done():
            return  # the reconnection attaches again
        device = publisher.thing.name
        reply = reply_topic(self.topic_root, device)
        client = link.paho

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            self.delivered += 1
            client.publish(reply, message.payload, qos=REPLY_QOS)

        client.on_message = on_message
        try:
            await link.subscribe(
                command_topic(self.topic_root, device), COMMAND_QOS, within=self.within
            )
        except (ConnectFailed, aiomqtt.MqttError, TimeoutError) as exc:
            self.refused.append(f"{device}: {exc}")


class Controller:
    """The cloud side: one connection, commands published on an open-loop schedule, replies
    matched to their command by id."""

    def __init__(self, plan: CommandPlan, devices: list[str], connector: Connector) -> None:
        self.plan = plan
        self.devices = devices
        self.connector = connector
        self.tally = CommandTally(rate=plan.rate)
        self._link: Link | None = None
        self._sent_at: dict[int, float] = {}  # command id -> monotonic send time, unreplied
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Connect and subscribe to the replies; a failure is the tally's `error`."""
        try:
            link = await self.connector.open(self.plan.controller, on_message=self._on_reply)
        except ConnectFailed as exc:
            self.tally.error = f"the command controller could not connect: {exc.reason}"
            return
        try:
            await link.subscribe(
                reply_filter(self.plan.topic_root), COMMAND_QOS, within=self.connector.timeout
            )
        except (ConnectFailed, aiomqtt.MqttError, TimeoutError) as exc:
            self.tally.error = f"the command controller could not subscribe to replies: {exc}"
            await link.close()
            return
        self._link = link

    def start(self, start: float, span: float, stop: StopSignal) -> None:
        """Publish from monotonic `start` for `span` seconds (the send's schedule)."""
        total = messages_in(span, self.plan.rate, 0.0) if self.devices else 0
        self._task = asyncio.create_task(self._publish(start, total, stop))

    async def _publish(self, start: float, total: int, stop: StopSignal) -> None:
        """Open loop: what is due is counted due, whether or not it can be sent."""
        rate, tally = self.plan.rate, self.tally
        while tally.due < total and not stop.event.is_set():
            now = time.monotonic()
            due = min(total, int((now - start) * rate + 1e-9) + 1) if now >= start else 0
            for command in range(tally.due, due):
                tally.due += 1
                self._send(command)
            if tally.due < total:
                await stop.sleep(max(start + tally.due / rate - time.monotonic(), 0.001))

    def _send(self, command: int) -> None:
        link = self._link
        if link is None:
            return
        if link.lost.done():
            self.tally.error = f"the command controller lost its connection ({link.lost.result()})"
            return
        device = self.devices[command % len(self.devices)]
        topic = command_topic(self.plan.topic_root, device)
        self._sent_at[command] = time.monotonic()
        info = link.paho.publish(topic, command_payload(command), qos=COMMAND_QOS)
        if info.rc:
            del self._sent_at[command]
            return
        self.tally.sent += 1

    def _on_reply(self, _topic: str, payload: bytes | bytearray) -> None:
        command = command_id(payload)
        sent = self._sent_at.pop(command, None) if command is not None else None
        if sent is None:  # a duplicate, or not ours
            return
        self.tally.replied += 1
        self.tally.round_trip.record(time.monotonic() - sent)

    def pending(self) -> bool:
        """Commands still to send or to be answered: the sender's drain waits for them."""
        running = self._task is not None and not self._task.done()
        link = self._link
        return running or (bool(self._sent_at) and link is not None and not link.lost.done())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._link is not None:
            await self._link.close()


async def send_with_commands(
    send_plan: SendPlan,
    setup: SendSetup,
    commands: CommandPlan,
    stop: StopSignal,
    *,
    on_tick: Callable[[Snapshot], None] = lambda snapshot: None,
    clock: float | None = None,
    go: Callable[[], Awaitable[float]] | None = None,
) -> tuple[SendResult, CommandTally]:
    """`send_here` with commands: the controller connects while the devices do, starts its
    schedule when they start theirs, and the send drains until every command is answered
    (or its --drain runs out)."""
    connector = Connector(
        setup.endpoint,
        rate=1.0,
        timeout=setup.connect_timeout,
        retries=setup.connect_retries,
        keepalive=setup.keepalive,
    )
    devices = [t.identity.name for t in send_plan.things]
    controller = Controller(commands, devices, connector)
    responder = Responder(commands.topic_root, within=setup.connect_timeout)
    connecting = asyncio.create_task(controller.connect())
    span = schedule_span(t.schedule for t in send_plan.things)

    async def begin() -> float:
        await connecting
        start = time.monotonic() + 0.05 if go is None else await go()
        controller.start(start, span, stop)
        return start

    sender = sender_for(send_plan, setup, on_tick=on_tick, clock=clock, go=begin)
    sender.on_attach = responder.attach
    sender.pending = controller.pending
    try:
        result = await sender.run(stop)
    finally:
        if not connecting.done():
            connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await controller.close()
    tally = controller.tally
    tally.delivered = responder.delivered
    if responder.refused and tally.error is None:
        tally.error = (
            f"{len(responder.refused)} devices could not subscribe to their command topic, "
            f"first: {responder.refused[0]}"
        )
    return result, tally
