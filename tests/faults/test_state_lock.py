"""One command at a time changes a state dir (elf_async/statelock.py), with real processes:
a command held at a gate in front of moto holds the lock for as long as the test needs."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from support.fixtures import Cli, assert_one_line_error, stop_process
from support.gate import Gate, gate
from support.wait import wait_until


def lock_record(state_dir: Path) -> str:
    try:
        return (state_dir / "lock").read_text()
    except FileNotFoundError:
        return ""


def holds_lock(state_dir: Path, process: subprocess.Popen[str]) -> None:
    """Until `process` says in the lock file that it holds the lock (it is still running)."""

    def holding() -> bool:
        assert process.poll() is None, process.communicate()
        return lock_record(state_dir).startswith(f"{process.pid}\t")

    wait_until(holding, what=f"PID {process.pid} to hold the lock of {state_dir}")


def through(cli: Cli, held: Gate) -> Cli:
    """The same state dir, with the control plane behind the gate."""
    return Cli(state_dir=cli.state_dir, endpoint_url=held.url, cwd=cli.cwd)


def fleet_status(cli: Cli) -> dict[str, Any]:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def test_a_second_create_is_refused_naming_the_first(cli: Cli, iot: Any) -> None:
    with gate(cli.endpoint_url) as held:
        first = through(cli, held).popen("create", "30", "--key-type", "ec")
        try:
            holds_lock(cli.state_dir, first)
            refused = cli("create", "30")
            assert_one_line_error(refused, 2, "in use by", f"PID {first.pid}", "create 30")
            assert_one_line_error(cli("clean"), 2, f"PID {first.pid}")
            assert_one_line_error(cli("send", "--count", "1"), 2, f"PID {first.pid}")
            # Reading needs no lock (held before its first AWS call, the create has recorded
            # no fleet yet, which status says as such).
            assert "state_dir" in fleet_status(cli)
            held.open()
            _, err = first.communicate(timeout=300)
        finally:
            stop_process(first)
    assert first.returncode == 0, err
    status = fleet_status(cli)
    assert status["things"] == {"total": 30, "by_state": {"ready": 30}, "failed": {}}
    fleet = [
        t
        for t in iot.list_things(maxResults=250)["things"]
        if t["attributes"].get("elf_fleet") == status["fleet_id"]
    ]
    assert len(fleet) == len(iot.list_things(maxResults=250)["things"]) == 30
    assert lock_record(cli.state_dir) == ""  # the holder cleared its record
    clean = cli("clean")
    assert clean.returncode == 0, clean.stderr
    assert iot.list_things()["things"] == []


def test_the_lock_goes_with_a_killed_holder(cli: Cli, iot: Any) -> None:
    with gate(cli.endpoint_url) as held:
        first = through(cli, held).popen("create", "3", "--key-type", "ec")
        try:
            holds_lock(cli.state_dir, first)
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            stop_process(first)
    again = cli("create", "3", "--key-type", "ec")
    assert again.returncode == 0, again.stderr
    assert fleet_status(cli)["things"]["by_state"] == {"ready": 3}
    assert cli("clean").returncode == 0


def test_readers_share_the_lock_and_keep_writers_out(cli: Cli, iot: Any) -> None:
    """Two sends reading the fleet (held at DescribeEndpoint, which they cache in the ledger)
    run side by side; a clean or a create meanwhile is refused, naming one of them."""
    assert cli("create", "2", "--key-type", "ec").returncode == 0
    with gate(cli.endpoint_url) as held:
        readers = [
            through(cli, held).popen("send", "--count", "1"),
            through(cli, held).popen("subscribe", "--duration", "1"),
        ]
        try:
            wait_until(lambda: held.arrived >= 2, what="both readers at DescribeEndpoint")
            assert all(reader.poll() is None for reader in readers)
            pids = [f"PID {reader.pid}" for reader in readers]
            for command in (["clean"], ["create", "1"]):
                refused = cli(*command)
                assert_one_line_error(refused, 2, "in use by")
                assert any(pid in refused.stderr for pid in pids), refused.stderr
        finally:
            for reader in readers:  # held at the gate: nothing to wait for
                reader.kill()
                reader.communicate()
    assert cli("clean").returncode == 0
    assert iot.list_things()["things"] == []
