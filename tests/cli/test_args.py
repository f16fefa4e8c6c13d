"""The options of send, subscribe and run, declared once (elf_async.cli._args): `run` takes
every option of `send`, and a command cannot declare one of them twice."""

from __future__ import annotations

import inspect
from typing import Annotated

import pytest
import typer
from support.fixtures import assert_one_line_error
from support.local import LocalCli
from typer.main import get_command

from elf_async.cli import app, hoist_global_options
from elf_async.cli._args import ConnectArgs, SendArgs, takes


def _options(command: str) -> dict[str, str]:
    """Every option spelling of `command` (--stamp and --no-stamp alike), with its
    parameter's kind: what `--help` lists."""
    group = get_command(app)
    params = group.commands[command].params  # type: ignore[attr-defined]
    return {
        spelling: param.param_type_name
        for param in params
        for spelling in (*param.opts, *param.secondary_opts)
    }


def test_run_accepts_every_option_and_argument_of_send() -> None:
    send, run = _options("send"), _options("run")
    missing = {name for name in send if name not in run}
    assert not missing, f"run lacks send's {sorted(missing)}"
    assert send["message"] == run["message"] == "argument"
    assert {"--payload-template", "--stamp", "--no-stamp", "--things", "--max-inflight"} <= set(run)


def test_subscribe_accepts_every_connect_option() -> None:
    send, subscribe = _options("send"), _options("subscribe")
    connect = {
        "--mqtt-endpoint", "--port", "--ca-file", "--root-cert", "--connect-rate",
        "--connect-timeout", "--connect-retries", "--keepalive", "--allow-over-aws-limits",
    }  # fmt: skip
    assert connect <= set(send)
    assert connect <= set(subscribe)


def test_the_options_arrive_gathered_into_their_dataclass() -> None:
    seen: list[SendArgs] = []

    @takes
    def command(first: Annotated[str, typer.Argument()], args: SendArgs) -> None:
        seen.append(args)

    parameters = inspect.signature(command).parameters
    values = {name: param.default for name, param in parameters.items()}
    command(**values | {"first": "x", "rate": "5/s", "keepalive": "2m"})
    assert seen == [SendArgs(rate="5/s", connect=ConnectArgs(keepalive="2m"))]
    assert list(parameters)[:3] == ["first", "message", "things"]


def test_an_option_declared_twice_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="declared twice: count"):

        @takes
        def command(count: str, args: SendArgs) -> None:
            del count, args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["create", "3", "--local"], ["--local", "create", "3"]),
        (
            ["clean", "--state-dir=s", "--yes", "--region", "eu-west-1", "-v"],
            ["--state-dir=s", "--region", "eu-west-1", "-v", "clean", "--yes"],
        ),
        (["local", "up", "--state-dir", "s"], ["--state-dir", "s", "local", "up"]),
        (["run", "3", "--local", "-q"], ["-q", "run", "3", "--local"]),  # run has its own --local
        (["subscribe", "-q", "--local"], ["--local", "subscribe", "-q"]),  # and subscribe its -q
        (["send", "--topic", "--local"], ["send", "--topic", "--local"]),  # a value stays
        (["send", "--", "--local"], ["send", "--", "--local"]),
        (["--local", "status", "--json"], ["--local", "status", "--json"]),
    ],
)
def test_global_options_after_the_command_are_taken_as_given_before_it(
    argv: list[str], expected: list[str]
) -> None:
    assert hoist_global_options(argv) == expected


def test_local_after_the_command_is_the_global_option(local_cli: LocalCli) -> None:
    result = local_cli("create", "3", "--local")  # no stack runs for this state dir
    assert_one_line_error(
        result, 1, f"no local stack is running for state dir {local_cli.state_dir}"
    )
