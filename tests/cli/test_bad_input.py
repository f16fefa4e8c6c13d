"""Bad input to the commands that create: one line, exit 2, and nothing created (no state dir,
no ledger, no thing in AWS). The checks themselves are unit-tested in test_options.py; here
the CLI wiring: the global options, every command's text options, the ledger."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from support.fixtures import Cli, assert_one_line_error

NOT_UTF8 = os.fsdecode(b"elf\xff")  # what Python makes of the byte 0xff in argv


def test_bad_input_to_create_creates_nothing(cli: Cli, iot: Any, tmp_path: Path) -> None:
    not_a_url = Cli(state_dir=cli.state_dir, endpoint_url="notaurl")
    cases = [
        (not_a_url, ["create", "1"], "--endpoint-url 'notaurl': not an http:// or https:// URL"),
        (cli, ["create", "1", "--api-rate", "Foo=10/s"], "--api-rate Foo: not an API"),
        (cli, ["create", "1", "--prefix", NOT_UTF8], "--prefix: not valid UTF-8 (byte 0xff"),
        (cli, ["create", "1", "--topic-root", NOT_UTF8], "--topic-root: not valid UTF-8"),
        (cli, ["--region", NOT_UTF8, "create", "1"], "--region: not valid UTF-8"),
        (cli, ["clean", "--fleet", NOT_UTF8], "--fleet: not valid UTF-8"),
        (cli, ["run", "1", NOT_UTF8], "MESSAGE: not valid UTF-8 (byte 0xff at character 4)"),
    ]
    with ThreadPoolExecutor(4) as pool:  # each run is a fresh interpreter: in parallel
        results = pool.map(lambda case: case[0](*case[1], timeout=120), cases)
        for result, (_, _, fragment) in zip(results, cases, strict=True):
            assert_one_line_error(result, 2, fragment)
    assert not cli.state_dir.exists()
    assert iot.list_things()["things"] == []


def test_a_create_that_fails_on_input_leaves_no_ledger(cli: Cli, iot: Any) -> None:
    """`--cert-mode ca` without its CA is found once the ledger is open: the ledger it created
    goes with the failure, so the state dir is as free for `run` as before."""
    result = cli("create", "1", "--cert-mode", "ca")
    assert_one_line_error(result, 2, "--cert-mode ca needs --ca-cert and --ca-key")
    assert not list(cli.state_dir.glob("ledger*"))  # the state-dir lock file may stay
    assert iot.list_things()["things"] == []
    assert cli("create", "1").returncode == 0
    assert (cli.state_dir / "ledger.sqlite3").is_file()
