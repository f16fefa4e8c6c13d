"""The options of send, subscribe and run, declared once (elf_async.cli._args): `run` takes
every option of `send`, and a command cannot declare one of them twice."""

from __future__ import annotations

import inspect
from typing import Annotated

import pytest
import typer
from typer.main import get_command

from elf_async.cli import app
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
