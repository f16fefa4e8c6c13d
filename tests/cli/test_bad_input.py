"""Bad input to the commands that create: one line, exit 2, and nothing created (no state dir,
no ledger, no thing in AWS). The checks themselves are unit-tested in test_options.py; here
the CLI wiring: the global options, every command's text options, the ledger."""

from __future__ import annotations

import os
import socket
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


def test_bad_metrics_and_cloudwatch_options_stop_before_anything_is_created(
    cli: Cli, iot: Any
) -> None:
    """--metrics-port out of range, a port in use, an address that is not one or not this
    machine's, companions without their option: one line, exit 2, before create or connect."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["send", "--metrics-port", "0"], "--metrics-port 0: not a port (1 to 65535)"),
            (["subscribe", "--metrics-port", "65536"], "--metrics-port 65536: not a port"),
            (["send", "--metrics-port", port], f"--metrics-port {port}: 127.0.0.1:{port} is in"),
            (["run", "1", "--metrics-port", port], f"127.0.0.1:{port} is in use"),
            (["subscribe", "--metrics-port", port], f"127.0.0.1:{port} is in use"),
            (["send", "--metrics-port", "9464", "--metrics-addr", "no such!"],
             "--metrics-addr 'no such!': not an address or a host name"),
            (["run", "1", "--metrics-port", "9464", "--metrics-addr", "192.0.2.1"],
             "--metrics-port 9464: cannot listen on 192.0.2.1"),
            (["send", "--metrics-linger", "1m"], "--metrics-linger need --metrics-port"),
            (["run", "1", "--cloudwatch-wait", "1m"], "--cloudwatch-wait needs --cloudwatch"),
        ]  # fmt: skip
        with ThreadPoolExecutor(4) as pool:
            results = pool.map(lambda case: cli(*case[0], timeout=120), cases)
            for result, (_, fragment) in zip(results, cases, strict=True):
                assert_one_line_error(result, 2, fragment)
    assert not cli.state_dir.exists()
    assert iot.list_things()["things"] == []
