"""Issue 11, item 10: `run` interrupted during create still writes its report; `clean` counts
what it removed itself; `clean --only-local` lists what stays in AWS; state dirs, ledgers and
lock files are private (0700, 0600) from the start."""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
from support.fake_plane import FakeIot, FakePlane, Killed, fake_session
from support.fixtures import Cli
from support.gate import gate
from support.local import LocalCli
from support.report import assert_conforms
from support.wait import wait_until

from elf_async.controlplane.clean import clean_with
from elf_async.controlplane.create import CreateRequest, create_with
from elf_async.controlplane.ledger import Ledger
from elf_async.progress import NoProgress
from elf_async.report.model import UnsentRunReport


def test_run_interrupted_during_create_writes_its_report(cli: Cli, tmp_path: Path) -> None:
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    with gate(cli.endpoint_url) as held:
        held_cli = Cli(state_dir=cli.state_dir, endpoint_url=held.url, cwd=cli.cwd)
        process = held_cli.popen(
            "run", "5", "--rate", "1/s", "--threshold", "messages.acked>=1",
            "--report", str(report), "--junit", str(junit),
        )  # fmt: skip
        try:
            wait_until(lambda: held.arrived >= 1, what="create's first call to AWS")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, stderr
    document = json.loads(report.read_text())
    assert_conforms(document, UnsentRunReport)
    assert (document["command"], document["outcome"]) == ("run", "interrupted")
    assert document["options"]["rate"] == "1/s"  # the send's options, as a send report has
    assert document["run"]["exit_code"] == 130
    assert document["run"]["failure"] == "interrupted by SIGINT"
    assert [(t["expr"], t["value"], t["ok"]) for t in document["thresholds"]] == [
        ("messages.acked>=1", None, False)
    ]
    assert junit.is_file()
    assert not (cli.state_dir / "ledger.sqlite3").exists()  # nothing was created


async def test_clean_counts_only_what_it_removed_itself(tmp_path: Path) -> None:
    """A clean killed after removing some things, then a clean that removes the rest: the
    second one says it removed the rest, not every thing the ledger ever removed."""
    iot = FakeIot()
    with Ledger.open(tmp_path, create=True) as ledger:
        request = CreateRequest(count=6, concurrency=2, key_type="ec")
        await create_with(fake_session(tmp_path, FakePlane(iot), ledger), request, NoProgress())
    dying = FakePlane(iot, lose_response={"UpdateCertificate": 3})
    with Ledger.open(tmp_path) as ledger:
        session = fake_session(tmp_path, dying, ledger)
        with pytest.raises(Killed):
            await clean_with(session, fleet_id=None, concurrency=1, progress=NoProgress())
    with Ledger.open(tmp_path) as ledger:
        gone_before = sum(1 for r in ledger.things() if r.gone)
        session = fake_session(tmp_path, FakePlane(iot), ledger)
        again = await clean_with(session, fleet_id=None, concurrency=2, progress=NoProgress())
    assert gone_before == 2  # the third thing's certificate went INACTIVE, then the clean died
    assert (again.summary.attempted, again.summary.removed) == (4, 4)
    assert again.summary.forgotten
    assert iot.is_empty()


def test_only_local_lists_what_stays_in_aws_even_with_yes(cli: Cli, iot: Any) -> None:
    created = json.loads(cli("create", "2", "--key-type", "ec", "--json").stdout)
    forgot = cli("clean", "--only-local", "--yes")
    assert forgot.returncode == 0, forgot.stderr
    for name in (f"{created['prefix']}-00000", f"{created['prefix']}-00001"):
        assert name in forgot.stdout
    assert f"policy elf-{created['fleet_id']}-policy" in forgot.stdout
    assert f"clean --fleet {created['fleet_id']}" in forgot.stdout
    assert len(iot.list_things()["things"]) == 2  # they do stay
    assert cli("clean", "--fleet", created["fleet_id"]).returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dirs_ledgers_and_locks_are_private(local_cli: LocalCli) -> None:
    """`local up` in a state dir that does not exist yet, then a create."""
    fresh = LocalCli(local_cli.state_dir.parent / "fresh")
    up = fresh("local", "up")
    assert up.returncode == 0, up.stderr
    try:
        assert mode(fresh.state_dir) == 0o700
        assert mode(fresh.state_dir / "local") == 0o700
        created = fresh("--local", "create", "1")
        assert created.returncode == 0, created.stderr
        for private in ("ledger.sqlite3", "lock"):
            assert mode(fresh.state_dir / private) == 0o600, private
        assert mode(fresh.state_dir / "certs") == 0o700
        [key] = (fresh.state_dir / "certs").glob("*.key")
        assert mode(key) == 0o600
    finally:
        assert fresh("local", "down").returncode == 0
