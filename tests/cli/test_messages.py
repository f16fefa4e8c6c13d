"""Messages that must not mislead: a suggested command runs as shown (with the global options
the user gave), an empty ledger is no fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import assert_one_line_error
from support.local import LocalCli

from elf_async.cli import _common
from elf_async.config import Settings
from elf_async.controlplane.ledger import Ledger


@pytest.fixture
def given(monkeypatch: pytest.MonkeyPatch) -> type[Settings]:
    """The global options a command was given, as main() remembers them (restored after)."""
    monkeypatch.setattr(_common, "_given", None)
    return Settings


def test_a_suggested_command_repeats_the_global_options_given(given: type[Settings]) -> None:
    _common.remember(given(state_dir=Path("my dir"), local=True, region="eu-west-1"))
    assert _common.with_global_options("no fleet (run `elf-async create` first)") == (
        "no fleet (run `elf-async --state-dir 'my dir' --local --region eu-west-1 create` first)"
    )
    # a command that names an option keeps its own; the stack's commands take no --local
    assert _common.with_global_options("`elf-async --state-dir x local up`") == (
        "`elf-async --region eu-west-1 --state-dir x local up`"
    )
    _common.remember(given(state_dir=Path(".elf")))
    assert _common.with_global_options("run `elf-async create`") == "run `elf-async create`"


def test_the_no_fleet_hint_keeps_the_state_dir_and_region(local_cli: LocalCli) -> None:
    result = local_cli("--region", "eu-west-1", "send")
    assert_one_line_error(
        result,
        2,
        f"no fleet in {local_cli.state_dir} (run `elf-async --state-dir {local_cli.state_dir} "
        "--region eu-west-1 create` first)",
    )


def test_an_empty_ledger_is_no_fleet(local_cli: LocalCli) -> None:
    """An older elf-async left one after a create that failed before its first AWS call."""
    with Ledger.open(local_cli.state_dir, create=True):
        pass
    result = local_cli("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"no fleet in {local_cli.state_dir} (its ledger records nothing: `elf-async --state-dir "
        f"{local_cli.state_dir} clean --only-local --yes` deletes it)\n"
    )
