"""Bad input to the commands that create: one line, exit 2, and nothing created (no state dir,
no ledger, no thing in AWS). The checks themselves are unit-tested in test_options.py; here
the CLI wiring: the global options, every command's text options, the ledger."""

from __future__ import annotations

from typing import Any

from support.fixtures import Cli, assert_one_line_error


def test_a_create_that_fails_on_input_leaves_no_ledger(cli: Cli, iot: Any) -> None:
    """`--cert-mode ca` without its CA is found once the ledger is open: the ledger it created
    goes with the failure, so the state dir is as free for `run` as before."""
    result = cli("create", "1", "--cert-mode", "ca")
    assert_one_line_error(result, 2, "--cert-mode ca needs --ca-cert and --ca-key")
    assert list(cli.state_dir.iterdir()) == []
    assert iot.list_things()["things"] == []
    assert cli("create", "1").returncode == 0
    assert (cli.state_dir / "ledger.sqlite3").is_file()
