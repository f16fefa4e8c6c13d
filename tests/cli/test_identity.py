"""`create --identity shared`: no things, one certificate and one policy for any COUNT of
virtual devices, each connecting with its own client id. End to end against the moto server
and a mosquitto that trusts the test CA: the broker's log names every client id, an
independent subscriber counts what arrived, boto3 counts what is left in AWS."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA, Observer
from support.send import load, send

from elf_async.local.mosquitto import Mosquitto

DEVICES = 200


def _ca(test_ca: FixtureCA) -> list[str]:
    return ["--cert-mode", "ca", "--ca-cert", str(test_ca.cert_file),
            "--ca-key", str(test_ca.key_file), "--key-type", "ec"]  # fmt: skip


def _left_in_aws(iot: Any) -> tuple[int, int, int]:
    return (
        len(iot.list_things()["things"]),
        len(iot.list_certificates()["certificates"]),
        len(iot.list_policies()["policies"]),
    )


def test_a_shared_identity_fleet_sends_from_every_device_and_cleans_up(
    cli: Cli,
    iot: Any,
    test_ca: FixtureCA,
    mosquitto: Mosquitto,
    observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:
    created = cli("create", str(DEVICES), "--identity", "shared", *_ca(test_ca), "--json")
    assert created.returncode == 0, created.stderr
    summary = json.loads(created.stdout)
    prefix = summary["prefix"]
    assert (summary["identity"], summary["created"], summary["things_in_fleet"]) == (
        "shared",
        DEVICES,
        DEVICES,
    )
    assert _left_in_aws(iot) == (0, 1, 1)  # no thing, one certificate, one policy
    [cert] = iot.list_certificates()["certificates"]
    policies = iot.list_attached_policies(target=cert["certificateArn"])["policies"]
    assert [p["policyName"] for p in policies] == [f"elf-{summary['fleet_id']}-policy"]
    status = json.loads(cli("status", "--json").stdout)
    assert (status["identity"], status["devices"]) == ("shared", DEVICES)

    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(cli, mosquitto, "--rate", "1/s", "--count", "2", "--connect-rate", "200/s",
                  "--report", str(report_file), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = load(report_file)
    assert report["fleet"]["identity"] == "shared"
    names = [f"{prefix}-{i:05d}" for i in range(DEVICES)]
    assert [t["name"] for t in report["things"]] == names
    assert report["messages"]["acked"] == report["messages"]["scheduled"] == 2 * DEVICES
    # The broker's side: one connection per device, each with its own client id.
    log = mosquitto.log_file.read_text(errors="replace")
    connected = re.findall(r"New client connected from \S+ as (\S+) ", log)
    assert sorted(c for c in connected if c.startswith(prefix)) == names
    assert "already connected" not in log
    # An independent subscriber received exactly what was acknowledged, on each device's topic.
    watcher.settle(report["messages"]["acked"])
    acked = {t["name"]: t["acked"] for t in report["things"]}
    assert watcher.counts() == {f"elf/{name}": acked[name] for name in names}

    cleaned = cli("clean")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert _left_in_aws(iot) == (0, 0, 0)
    assert not (cli.state_dir / "certs").exists()


def test_run_with_a_shared_identity_leaves_nothing(
    cli: Cli, iot: Any, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    report_file = tmp_path / "run.json"
    result = cli(
        "run", "20", "--identity", "shared", *_ca(test_ca),
        "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file", str(mosquitto.ca_file),
        "--count", "1", "--report", str(report_file), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text())
    assert (report["fleet"]["identity"], report["messages"]["acked"]) == ("shared", 20)
    assert report["run"]["cleaned"] is True
    assert _left_in_aws(iot) == (0, 0, 0)


def test_a_fleet_keeps_its_identity_mode(cli: Cli, iot: Any, test_ca: FixtureCA) -> None:
    assert cli("create", "2", "--identity", "shared", *_ca(test_ca)).returncode == 0
    more = cli("create", "3")  # more devices, no AWS call
    assert more.returncode == 0, more.stderr
    assert json.loads(cli("status", "--json").stdout)["devices"] == 5
    assert _left_in_aws(iot) == (0, 1, 1)
    changed = cli("create", "1", "--identity", "thing")
    assert_one_line_error(changed, 2, "created with --identity shared; it cannot change to thing")


def test_bad_identity_input_is_one_line(cli: Cli, iot: Any) -> None:
    cases = [
        (["create", "1", "--identity", "bogus"], "--identity must be thing or shared, not 'bogus'"),
        (["run", "1", "--identity", "bogus"], "--identity must be thing or shared"),
        (["create", "20000", "--identity", "shared"], "COUNT 20000 is above --max-things 10000"),
        (["send", "--keepalive", "5"], "--keepalive 5s: AWS IoT clamps the keep-alive to 30-1200"),
        (["send", "--keepalive", "5000"], "--keepalive 5000s: AWS IoT clamps"),
        (["subscribe", "--keepalive", "5"], "--keepalive 5s: AWS IoT clamps"),
        (["run", "1", "--keepalive", "5000"], "--keepalive 5000s: AWS IoT clamps"),
    ]
    for args, fragment in cases:
        assert_one_line_error(cli(*args, timeout=120), 2, fragment)
    assert not cli.state_dir.exists()
    assert _left_in_aws(iot) == (0, 0, 0)


def test_clean_fleet_finds_the_shared_certificate_without_the_ledger(
    cli: Cli, iot: Any, test_ca: FixtureCA
) -> None:
    """No thing carries the fleet id: the fleet policy leads to its certificate, which is
    deleted only when nothing else holds it (here a second fleet's, kept by its own policy)."""
    created = json.loads(cli("create", "3", "--identity", "shared", *_ca(test_ca), "--json").stdout)
    [ours] = iot.list_certificates()["certificates"]
    assert json.loads(cli("status", "--json").stdout)["shared_certificate"] == {
        "name": f"{created['prefix']}-shared",
        "state": "ready",
        "id": ours["certificateId"],
    }
    other = Cli(cli.state_dir.with_name("other"), cli.endpoint_url)
    assert other("create", "1", "--identity", "shared", *_ca(test_ca)).returncode == 0
    [theirs] = [c for c in iot.list_certificates()["certificates"] if c != ours]
    policy = f"elf-{created['fleet_id']}-policy"
    iot.attach_policy(policyName=policy, target=theirs["certificateArn"])
    assert cli("clean", "--only-local", "--yes").returncode == 0

    result = cli("clean", "--fleet", created["fleet_id"])
    assert result.returncode == 0, result.stdout + result.stderr
    left = iot.list_certificates()["certificates"]
    assert [c["certificateId"] for c in left] == [theirs["certificateId"]]
    assert left[0]["status"] == "ACTIVE"
    assert [p["policyName"] for p in iot.list_policies()["policies"]] != [policy]
    assert len(iot.list_policies()["policies"]) == 1  # the other fleet's
    assert "left in AWS" in result.stdout
    assert other("clean").returncode == 0
    assert _left_in_aws(iot) == (0, 0, 0)
