"""Commands cloud to device (`--commands`): the controller's identity made with the fleet,
every command delivered and replied to over the real local stack, bad input refused, and the
controller cleaned with the fleet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.fixtures import assert_one_line_error, iot_client
from support.local import LocalCli
from support.mqtt import FixtureCA, Observer
from support.report import assert_conforms
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
from elf_async.metrics import Histogram
from elf_async.report.model import SendReport
from elf_async.stopping import StopSignal


def test_topics_and_payloads() -> None:
    assert command_topic("elf/", "elf-a-00001") == "elf/elf-a-00001/cmd"
    assert reply_topic("elf", "elf-a-00001") == "elf/elf-a-00001/cmd/reply"
    assert reply_filter("load/test") == "load/test/+/cmd/reply"
    assert command_id(command_payload(42)) == 42
    assert command_id(b"not json") is None
    assert command_id(b'{"id": "7"}') is None
    assert command_id(b"[1]") is None


def test_twenty_devices_answer_every_command(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    """20 devices, 10 commands/s for 3 s: 30 commands due, sent, delivered and replied, each
    round trip in the histogram; status shows the controller; clean leaves nothing."""
    created = local_cli("--local", "create", "20", "--controller", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["controller"].endswith("-controller")
    status = json.loads(local_cli("status", "--json").stdout)
    assert status["controller"]["state"] == "ready"
    assert status["things"]["total"] == 20
    report_path = tmp_path / "report.json"
    result = local_cli(
        "--local", "send", "--rate", "1/s", "--duration", "3s", "--commands", "10/s",
        "--report", str(report_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert_conforms(report, SendReport)
    commands = report["commands"]
    assert commands["due"] == commands["sent"] == 30
    assert commands["delivered"] == commands["replied"] == 30
    assert commands["lost"] == 0
    assert commands["error"] is None
    assert commands["round_trip"]["count"] == 30
    assert Histogram.decode(report["histograms"]["commands"].encode()).count == 30
    assert "30 of 30 commands replied" in result.stdout
    cleaned = local_cli("--local", "clean", "--yes")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    iot = iot_client(stack["endpoint_url"])
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def test_commands_without_a_controller_or_with_a_bad_rate_are_refused(
    local_cli: LocalCli, stack: dict[str, Any]
) -> None:
    assert local_cli("--local", "create", "2").returncode == 0
    no_controller = local_cli("--local", "send", "--duration", "1s", "--commands", "10/s")
    assert_one_line_error(no_controller, 2, "--commands needs the fleet's command controller")
    malformed = local_cli("--local", "send", "--duration", "1s", "--commands", "fast")
    assert_one_line_error(malformed, 2, "--commands: 'fast' is not a rate")
    workers = local_cli("--local", "send", "--commands", "1/s", "--workers", "2")
    assert_one_line_error(workers, 2, "--commands runs its controller in one process")
    assert local_cli("--local", "clean", "--yes").returncode == 0


def test_run_with_commands_makes_the_controller_and_cleans_it(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    report_path = tmp_path / "run.json"
    result = local_cli(
        "--local", "run", "4", "--rate", "1/s", "--duration", "2s", "--commands", "4/s",
        "--report", str(report_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    commands = json.loads(report_path.read_text())["commands"]
    assert commands["due"] == commands["delivered"] == commands["replied"] == 8
    iot = iot_client(stack["endpoint_url"])
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


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
