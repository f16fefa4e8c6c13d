"""`local up | status | down` and the global --local, against real moto and mosquitto."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.fixtures import assert_one_line_error, iot_client
from support.local import LocalCli, alive, reaping
from support.mqtt import FixtureCA, Observer
from support.wait import wait_for_log, wait_until

from elf_async.controlplane.certs import CertificateAuthority, generate_key, key_pem
from elf_async.files import write_private, write_public
from elf_async.local.mosquitto import Mosquitto
from elf_async.local.processes import Owned


def _status(local_cli: LocalCli) -> dict[str, object]:
    result = local_cli("local", "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def _publish_with_local_ca(local_cli: LocalCli, port: int, tmp_path: Path) -> int:
    """mosquitto_pub (not elf-async) with a client certificate the local CA signed."""
    local = local_cli.state_dir / "local"
    ca = CertificateAuthority.load(local / "ca.crt", local / "ca.key")
    key = generate_key("ec")
    key_file, cert_file = tmp_path / "probe.key", tmp_path / "probe.crt"
    write_private(key_file, key_pem(key))
    write_public(cert_file, ca.sign(key.public_key(), "probe"))
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(local / "ca.crt"),
         "--cert", str(cert_file), "--key", str(key_file), "-t", "elf/probe", "-m", "hi",
         "-i", "probe"],
        capture_output=True, text=True, timeout=30,
    ).returncode  # fmt: skip


def test_up_twice_is_idempotent_and_down_stops_exactly_it(
    local_cli: LocalCli, tmp_path: Path
) -> None:
    first = local_cli("local", "up")
    assert first.returncode == 0, first.stderr
    assert "local stack started" in first.stdout
    record = local_cli.stack()
    assert record is not None
    pids = [record["moto"]["pid"], record["mosquitto"]["pid"]]
    assert all(alive(pid) for pid in pids)

    second = local_cli("local", "up")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout
    assert local_cli.stack() == record

    local = local_cli.state_dir / "local"
    assert stat.S_IMODE(local.stat().st_mode) == 0o700
    assert stat.S_IMODE((local / "ca.key").stat().st_mode) == 0o600
    iot = iot_client(record["endpoint_url"])
    assert iot.list_things()["things"] == []
    described = iot.describe_ca_certificate(certificateId=record["ca_certificate_id"])
    assert described["certificateDescription"]["status"] == "ACTIVE"
    assert _publish_with_local_ca(local_cli, record["mosquitto"]["port"], tmp_path) == 0
    assert _status(local_cli)["running"] is True

    down = local_cli("local", "down")
    assert down.returncode == 0, down.stderr
    assert "stopped" in down.stdout
    assert not any(alive(pid) for pid in pids)
    assert _status(local_cli) == {"running": False}
    again = local_cli("local", "down")
    assert (again.returncode, again.stdout.strip()) == (0, "no local stack is running")


def test_down_with_nothing_up_is_a_no_op(local_cli: LocalCli) -> None:
    result = local_cli("local", "down")
    assert (result.returncode, result.stdout.strip(), result.stderr) == (
        0,
        "no local stack is running",
        "",
    )


def test_down_never_signals_a_recycled_pid(local_cli: LocalCli) -> None:
    """A recorded PID now held by another process (other start time) is left alone."""
    stranger = subprocess.Popen(["sleep", "120"])
    try:
        local = local_cli.state_dir / "local"
        local.mkdir(mode=0o700)
        record = {
            "version": 1,
            "region": "us-west-2",
            "started_at": "2020-01-01T00:00:00+00:00",
            "moto": {"pid": stranger.pid, "port": 1, "started": "ticks:1"},
            "mosquitto": {"pid": stranger.pid, "port": 2, "started": "ticks:1"},
            "ca_certificate_id": "x",
        }
        (local / "stack.json").write_text(json.dumps(record))
        status = local_cli("local", "status")
        assert "broken" in status.stdout
        result = local_cli("local", "down")
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None
        assert local_cli.stack() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_local_without_a_stack_is_one_clear_line(local_cli: LocalCli) -> None:
    result = local_cli("--local", "create", "1")
    assert_one_line_error(result, 1, "no local stack is running", "local up")


def test_local_refuses_another_endpoint(local_cli: LocalCli) -> None:
    assert local_cli("local", "up").returncode == 0
    try:
        result = local_cli("--local", "--endpoint-url", "http://127.0.0.1:9", "create", "1")
        assert_one_line_error(result, 2, "--local targets", "--endpoint-url")
        result = local_cli("--local", "create", "2", "--cert-mode", "aws")
        assert_one_line_error(result, 2, "--cert-mode ca")
    finally:
        assert local_cli("local", "down").returncode == 0


def test_create_and_clean_against_the_local_stack(local_cli: LocalCli) -> None:
    assert local_cli("local", "up").returncode == 0
    try:
        record = local_cli.stack()
        assert record is not None
        created = local_cli("--local", "create", "3")
        assert created.returncode == 0, created.stderr
        iot = iot_client(record["endpoint_url"])
        things = iot.list_things()["things"]
        assert len(things) == 3
        signed = iot.list_certificates_by_ca(caCertificateId=record["ca_certificate_id"])
        assert len(signed["certificates"]) == 3
        cleaned = local_cli("--local", "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert iot.list_things()["things"] == []
        assert iot.list_certificates()["certificates"] == []
        assert iot.list_policies()["policies"] == []
    finally:
        assert local_cli("local", "down").returncode == 0


def _kill(pid: int) -> None:
    """SIGKILL, as a crash or the OOM killer ends a process: nothing is saved, nothing closed."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), what=f"pid {pid} to die")


def _up(local_cli: LocalCli) -> dict[str, Any]:
    result = local_cli("local", "up")
    assert result.returncode == 0, result.stderr
    record = local_cli.stack()
    assert record is not None
    return record


def _things(iot: Any) -> list[str]:
    return sorted(thing["thingName"] for thing in iot.list_things()["things"])


def _local_ca(local_cli: LocalCli) -> FixtureCA:
    local = local_cli.state_dir / "local"
    ca = CertificateAuthority.load(local / "ca.crt", local / "ca.key")
    return FixtureCA(ca, local / "ca.crt", local / "ca.key")


def test_up_after_the_broker_died_restarts_only_it_and_a_running_send_gets_back(
    local_cli: LocalCli, tmp_path: Path
) -> None:
    record = _up(local_cli)
    try:
        assert local_cli("--local", "create", "3").returncode == 0
        iot = iot_client(record["endpoint_url"])
        things = _things(iot)
        assert len(things) == 3
        log = local_cli.state_dir / "local" / "mosquitto" / "mosquitto.log"
        report = tmp_path / "report.json"
        process = local_cli.popen(
            "--local", "send", "--rate", "2/s", "--duration", "10m", "--qos", "1",
            "--report", str(report),
        )  # fmt: skip
        with reaping(process):
            wait_for_log(log, "New client connected", count=3, timeout=120)
            _kill(record["mosquitto"]["pid"])
            status = local_cli("local", "status")
            assert "mosquitto (pid" in status.stdout
            assert "restarts mosquitto on its port" in status.stdout
            assert "moto runs on untouched" in status.stdout

            restarted = local_cli("local", "up")
            assert restarted.returncode == 0, restarted.stderr
            assert "restarted mosquitto on its port" in restarted.stdout
            after = local_cli.stack()
            assert after is not None
            assert after["moto"] == record["moto"]  # the same process: its state untouched
            assert alive(record["moto"]["pid"])
            assert _things(iot) == things  # plain boto3 against that moto
            assert after["mosquitto"]["port"] == record["mosquitto"]["port"]
            assert after["mosquitto"]["pid"] != record["mosquitto"]["pid"]

            # Subscribed after the restart: a message from a thing means it got back.
            broker = Mosquitto.attach(
                process=Owned(after["mosquitto"]["pid"], after["mosquitto"]["started"]),
                port=after["mosquitto"]["port"],
                directory=log.parent,
            )
            watcher = Observer(broker, *_local_ca(local_cli).client_cert(tmp_path, "observer"))
            watcher.start()
            try:
                wait_until(
                    lambda: all(watcher.counts().get(f"elf/{name}") for name in things),
                    what="a message from every thing through the restarted broker",
                )
            finally:
                watcher.stop()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        sent = json.loads(report.read_text())
        assert sent["connections"]["reconnects"] == 3
        assert all(row["error"] is None for row in sent["things"])
        again = local_cli("--local", "send", "--count", "2")
        assert again.returncode == 0, again.stderr
    finally:
        assert local_cli("local", "down").returncode == 0


def test_up_after_moto_died_replays_its_state_on_its_port(local_cli: LocalCli) -> None:
    record = _up(local_cli)
    try:
        assert local_cli("--local", "create", "3").returncode == 0
        iot = iot_client(record["endpoint_url"])
        things = _things(iot)
        certificates = iot.list_certificates_by_ca(caCertificateId=record["ca_certificate_id"])
        ids = sorted(cert["certificateId"] for cert in certificates["certificates"])
        assert len(things) == len(ids) == 3
        _kill(record["moto"]["pid"])
        with (local_cli.state_dir / "local" / "moto-recording.jsonl").open("a") as recording:
            recording.write('{"headers": {"Host"')  # what moto was writing when the disk filled
        status = local_cli("local", "status")
        assert "restarts moto on its port and replays its recorded state" in status.stdout

        restarted = local_cli("local", "up")
        assert restarted.returncode == 0, restarted.stderr
        assert "restarted moto on its port, moto with its recorded state replayed" in (
            restarted.stdout
        )
        after = local_cli.stack()
        assert after is not None
        assert after["mosquitto"] == record["mosquitto"]  # the broker untouched
        assert after["moto"]["port"] == record["moto"]["port"]
        assert after["moto"]["pid"] != record["moto"]["pid"]
        assert _things(iot) == things  # plain boto3, the same endpoint
        replayed = iot.list_certificates_by_ca(caCertificateId=record["ca_certificate_id"])
        assert sorted(cert["certificateId"] for cert in replayed["certificates"]) == ids
        for name in things:
            assert len(iot.list_thing_principals(thingName=name)["principals"]) == 1

        iot.create_thing(thingName="made-after-the-restart")  # recorded too: a second restart
        _kill(after["moto"]["pid"])
        assert local_cli("local", "up").returncode == 0
        assert _things(iot) == sorted([*things, "made-after-the-restart"])
        iot.delete_thing(thingName="made-after-the-restart")
        cleaned = local_cli("--local", "clean")  # the ledger and the replayed moto agree
        assert cleaned.returncode == 0, cleaned.stderr
        assert iot.list_things()["things"] == []
        assert iot.list_certificates()["certificates"] == []
    finally:
        assert local_cli("local", "down").returncode == 0


def test_up_refuses_in_one_line_when_another_process_took_a_dead_parts_port(
    local_cli: LocalCli,
) -> None:
    record = _up(local_cli)
    port = record["mosquitto"]["port"]
    _kill(record["mosquitto"]["pid"])
    stranger = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys; s = socket.socket(); "
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
         f"s.bind(('127.0.0.1', {port})); s.listen(); print('ready', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline() == "ready\n"
        result = local_cli("local", "up")
        assert_one_line_error(
            result, 1, f"mosquitto's port {port} is taken by pid {stranger.pid}", "local up"
        )
        assert local_cli.stack() == record  # nothing moved
        assert alive(record["moto"]["pid"])
        assert stranger.poll() is None
        status = local_cli("local", "status")
        assert f"port {port} is taken by pid {stranger.pid}" in status.stdout
    finally:
        stranger.kill()
        stranger.wait()
        assert local_cli("local", "down").returncode == 0
