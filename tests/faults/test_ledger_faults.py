"""A ledger that is corrupt, empty or incomplete: every command refuses in one line (exit 2),
names the file and what to do, and calls no AWS API; following the advice cleans the fleet.

The commands run without --endpoint-url, with AWS_ENDPOINT_URL at a closed gate: a command
that fell back to a default endpoint would reach the gate, which counts it."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.gate import gate

from elf_async.controlplane.ledger import Ledger

COMMANDS = (["status"], ["create", "1"], ["send", "--count", "1"], ["clean"])


def truncate_to_half(ledger: Path) -> None:
    with ledger.open("r+b") as handle:
        handle.truncate(ledger.stat().st_size // 2)


def empty(ledger: Path) -> None:
    ledger.write_bytes(b"")


def garble_the_middle(ledger: Path) -> None:
    """Random bytes over 4 KiB around the middle: at least one whole page header."""
    middle = ledger.stat().st_size // 2
    with ledger.open("r+b") as handle:
        handle.seek(middle - 2048)
        handle.write(random.Random(11).randbytes(4096))


def forget_the_fleet_id(ledger: Path) -> None:
    db = sqlite3.connect(ledger)
    db.execute("DELETE FROM meta WHERE key='fleet_id'")
    db.commit()
    db.close()


def run(cli: Cli, *args: str, endpoint: str) -> subprocess.CompletedProcess[str]:
    """elf-async with no --endpoint-url: only the environment says where AWS is."""
    return subprocess.run(
        [sys.executable, "-m", "elf_async", "--state-dir", str(cli.state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli.env({"AWS_ENDPOINT_URL": endpoint}),
        cwd=cli.state_dir.parent,
    )


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (truncate_to_half, "corrupt"),
        (empty, "empty (0 bytes)"),
        (garble_the_middle, "corrupt"),
        (forget_the_fleet_id, "not the fleet they belong to"),
    ],
)
def test_a_damaged_ledger_is_refused_by_every_command_without_aws(
    cli: Cli, iot: Any, damage: Callable[[Path], None], says: str
) -> None:
    fleet_id = json.loads(cli("create", "2", "--key-type", "ec", "--json").stdout)["fleet_id"]
    ledger = cli.state_dir / "ledger.sqlite3"
    damage(ledger)
    with gate(cli.endpoint_url) as held:
        for command in COMMANDS:
            result = run(cli, *command, endpoint=held.url)
            assert_one_line_error(result, 2, str(ledger), says, "clean --fleet")
        assert held.arrived == 0  # no command reached for AWS
    ledger.rename(ledger.with_name("ledger.damaged"))  # what the message says to do
    cleaned = cli("clean", "--fleet", fleet_id)
    assert cleaned.returncode == 0, cleaned.stderr
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []


def test_a_ledger_that_records_no_fleet_is_forgotten_without_aws(cli: Cli) -> None:
    """A ledger with no fleet (an older elf-async left one when a create failed before its
    first AWS call; this one removes it): clean forgets it instead of asking a default
    endpoint about it."""
    with Ledger.open(cli.state_dir, create=True):
        pass  # made whole, records nothing
    assert (cli.state_dir / "ledger.sqlite3").is_file()
    with gate(cli.endpoint_url) as held:
        result = run(cli, "clean", endpoint=held.url)
        assert held.arrived == 0
    assert result.returncode == 0, result.stderr
    assert "recorded none" in result.stdout
    assert not (cli.state_dir / "ledger.sqlite3").exists()
