"""The mosquitto launcher: mutual TLS really is required, and stop works by PID."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

from support.mqtt import FixtureCA, start_mosquitto

from elf_async.local.mosquitto import Mosquitto


def _pub(broker: Mosquitto, key: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile",
         str(broker.ca_file), "--cert", str(cert), "--key", str(key), "-t", "elf/x", "-m", "hi",
         "-i", "probe"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


def test_client_signed_by_the_ca_connects_and_others_are_refused(
    mosquitto: Mosquitto, test_ca: FixtureCA, rogue_ca: FixtureCA, tmp_path: Path
) -> None:
    assert _pub(mosquitto, *test_ca.client_cert(tmp_path, "good")).returncode == 0
    assert _pub(mosquitto, *rogue_ca.client_cert(tmp_path, "bad")).returncode != 0


def test_attach_and_stop_by_pid(mosquitto: Mosquitto) -> None:
    attached = Mosquitto.attach(
        process=mosquitto.process, port=mosquitto.port, directory=mosquitto.directory
    )
    assert attached.alive()
    attached.stop()
    assert not mosquitto.alive()
    attached.stop()  # a no-op once gone


def test_restart_on_the_same_port(mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path) -> None:
    mosquitto.stop()
    again = Mosquitto.start(directory=mosquitto.directory, ca=test_ca.ca, port=mosquitto.port)
    try:
        assert _pub(again, *test_ca.client_cert(tmp_path, "good")).returncode == 0
    finally:
        again.stop()


def test_restart_from_its_own_config_keeps_its_port_and_certificate(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """What `local up` does for a dead broker: clients that trusted it trust it again."""
    certificate = (mosquitto.directory / "server.crt").read_text()
    mosquitto.stop()
    again = Mosquitto.restart(directory=mosquitto.directory, port=mosquitto.port)
    try:
        assert (again.directory / "server.crt").read_text() == certificate
        assert _pub(again, *test_ca.client_cert(tmp_path, "good")).returncode == 0
    finally:
        again.stop()


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


def test_mosquitto_may_open_as_many_files_as_the_hard_limit_allows(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """Each connection is a descriptor: mosquitto starts with its soft limit at the hard one
    (whatever soft limit its parent had) and no connection cap of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        broker = start_mosquitto(tmp_path / "mosquitto", test_ca)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert _open_files_limit(broker.pid) == (hard, hard)
        assert "max_connections -1" in (broker.directory / "mosquitto.conf").read_text()
    finally:
        broker.stop()
