"""Commands cloud to device (`--commands`), the data plane's side: topics and payloads, a
device that subscribes again after a takeover, the controller's round trips (the CLI's side is
in tests/cli/test_commands.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from support.mqtt import FixtureCA, Observer
from support.wait import wait_until_async

from elf_async.dataplane.commands import (
    CommandPlan,
    command_id,
    command_payload,
    command_topic,
    reply_filter,
    reply_topic,
    send_with_commands,
)
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, SendSetup, ThingPlan
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.local.mosquitto import Mosquitto
from elf_async.stopping import StopSignal


def test_topics_and_payloads() -> None:
    assert command_topic("elf/", "elf-a-00001") == "elf/elf-a-00001/cmd"
    assert reply_topic("elf", "elf-a-00001") == "elf/elf-a-00001/cmd/reply"
    assert reply_filter("load/test") == "load/test/+/cmd/reply"
    assert command_id(command_payload(42)) == 42
    assert command_id(b"not json") is None
    assert command_id(b'{"id": "7"}') is None
    assert command_id(b"[1]") is None


async def test_a_device_subscribes_again_after_its_connection_is_taken_over(
    mosquitto: Mosquitto, test_ca: FixtureCA, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    """A client with dev-0's id takes its session over: the broker drops the device, which
    reconnects (clean session: no subscription left) and, through the sender's `on_attach`,
    subscribes to its commands again: it answers commands after the reconnect."""
    replies = observer("elf/+/cmd/reply", 1, "reply-watcher")
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    things = [
        ThingPlan(
            Identity(name, index, *test_ca.client_cert(tmp_path, name)),
            f"elf/{name}",
            ThingSchedule(rate=2.0, phase=index / 4, total=2 * 300),
        )
        for index, name in enumerate(("dev-0", "dev-1"))
    ]
    setup = SendSetup(
        endpoint=endpoint, connect_per_s=100.0, connect_timeout=10.0, connect_retries=0,
        keepalive=60, drain=5.0,
    )  # fmt: skip
    key_file, cert_file = test_ca.client_cert(tmp_path, "elf-controller")
    plan = CommandPlan(10.0, "elf", Identity("elf-controller", -1, key_file, cert_file))
    topic = "elf/dev-0/cmd/reply"
    reconnects: list[int] = []

    def answered() -> int:
        return replies.counts().get(topic, 0)

    with StopSignal() as stop:

        async def take_over_then_stop() -> None:
            try:
                await wait_until_async(lambda: answered() > 0, what="a first reply from dev-0")
                intruder = Connector(endpoint, rate=10.0, timeout=10.0, retries=0)
                await (await intruder.open(things[0].identity)).close()
                await wait_until_async(lambda: any(reconnects), what="dev-0 to reconnect")
                before = answered()
                await wait_until_async(lambda: answered() > before, what="dev-0 to answer again")
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # taken by StopSignal's handler

        scenario = asyncio.create_task(take_over_then_stop())
        result, tally = await send_with_commands(
            SendPlan(things, spec, qos=1, window=100),
            setup,
            plan,
            stop,
            on_tick=lambda snapshot: reconnects.append(snapshot.totals.reconnects),
        )
        await scenario
    assert result.publishers[0].reconnects == 1
    assert 0 < tally.replied <= tally.delivered <= tally.sent <= tally.due
