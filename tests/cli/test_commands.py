"""`send`/`run --commands` on the local stack: the controller's identity made with the fleet
(`create --controller`), every command delivered and replied to, bad input refused, and the
controller cleaned with the fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.fixtures import assert_one_line_error, iot_client
from support.local import LocalCli
from support.report import assert_conforms

from elf_async.metrics import Histogram
from elf_async.report.model import SendReport


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
