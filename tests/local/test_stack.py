"""`local up | status | down` and the global --local, against real moto and mosquitto."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from support.fixtures import assert_one_line_error, iot_client
from support.local import LocalCli, alive

from elf_async.controlplane.certs import CertificateAuthority, generate_key, key_pem
from elf_async.files import write_private, write_public


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
