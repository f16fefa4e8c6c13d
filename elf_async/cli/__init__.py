"""The command line: parse, call, print. Each command lives in a module of its own; the options
are parsed and checked once, here (elf_async.cli._options), and the jobs get them typed."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.main
from typer._click.core import Command as ClickCommand
from typer._click.core import Parameter
from typer._click.exceptions import ClickException, NoArgsIsHelpError, NoSuchOption
from typer.core import TyperGroup, TyperOption

from elf_async import __version__
from elf_async.compat import unverified_versions

if (_unverified := unverified_versions()) is not None:  # before anything imports paho
    sys.stderr.write(f"error: {_unverified}\n")
    sys.exit(2)  # EXIT_USAGE: the installation is wrong, not the run

from elf_async.cli import clean, create, local, report, run, send, status, subscribe
from elf_async.cli._common import (
    Command,
    check_text_params,
    console_err,
    remember,
    verbose_requested,
    with_global_options,
)
from elf_async.cli._options import check_state_dir, parse_endpoint_url
from elf_async.config import DEFAULT_STATE_DIR, ENDPOINT_VARIABLES, Settings
from elf_async.errors import EXIT_INTERRUPTED, EXIT_USAGE, ElfError

app = typer.Typer(
    name="elf-async",
    help="Load generator for AWS IoT Core: create things, send over mutual TLS, measure, clean.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"elf-async {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    region: Annotated[
        str | None,
        typer.Option(envvar="ELF_REGION", help="AWS region [default: AWS config, else us-west-2]"),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(envvar="ELF_PROFILE", help="AWS profile from the AWS config.")
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            envvar="ELF_ENDPOINT_URL",
            help="Control-plane endpoint (moto, VPC endpoint). AWS_ENDPOINT_URL_IOT and "
            "AWS_ENDPOINT_URL are honoured too.",
        ),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option(envvar="ELF_STATE_DIR", help="Where the ledger and keys live.")
    ] = DEFAULT_STATE_DIR,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", envvar="ELF_VERBOSE", help="Debug logs, tracebacks.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", envvar="ELF_QUIET", help="Only errors and results.")
    ] = False,
    local_stack: Annotated[
        bool,
        typer.Option(
            "--local", envvar="ELF_LOCAL", help="Target the stack `elf-async local up` started."
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    check_text_params(ctx)
    check_state_dir(state_dir)
    if endpoint_url is not None:
        parse_endpoint_url("--endpoint-url", endpoint_url)
    for variable in ENDPOINT_VARIABLES:
        if os.environ.get(variable):
            parse_endpoint_url(variable, os.environ[variable])
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # botocore's debug logs print response bodies, private keys included: never let them through.
    for noisy in ("botocore", "aiobotocore", "aioboto3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = Settings(
        state_dir=state_dir,
        region=region,
        profile=profile,
        endpoint_url=endpoint_url,
        verbose=verbose,
        quiet=quiet,
        local=local_stack,
    )
    remember(ctx.obj)


app.command("create", cls=Command)(create.command)
app.command("clean", cls=Command)(clean.command)
app.command("status", cls=Command)(status.command)
app.command("send", cls=Command)(send.command)
app.command("subscribe", cls=Command)(subscribe.command)
app.add_typer(local.app)
app.command("run", cls=Command)(run.command)
app.add_typer(report.app)


def hoist_global_options(argv: list[str]) -> list[str]:
    """The global options given after the command, moved before it (`create 3 --local` is
    `--local create 3`), except where the command has an option of that name itself (`run
    --local`, `subscribe -q`). Values of options are never taken for option names."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    known = {name: param for param in group.params for name in _names(param)}
    start = 0  # where the command starts, after the global options given before it
    while start < len(argv) and argv[start].startswith("-") and argv[start] != "--":
        start += 1 + _takes_value(known.get(argv[start].split("=", 1)[0]), argv[start])
    command: ClickCommand = group
    end = start  # after the command's name (a group's subcommand's name included)
    while isinstance(command, TyperGroup) and end < len(argv) and argv[end] in command.commands:
        command = command.commands[argv[end]]
        end += 1
    own = {name: param for param in command.params for name in _names(param)}
    hoisted: list[str] = []
    rest: list[str] = []
    index = end
    while index < len(argv) and argv[index] != "--":
        token = argv[index]
        name = token.split("=", 1)[0]
        param = own.get(name) or known.get(name)
        size = 1 + _takes_value(param, token)
        (hoisted if name in known and name not in own else rest).extend(argv[index : index + size])
        index += size
    return argv[:start] + hoisted + argv[start:end] + rest + argv[index:]


def _names(param: Parameter) -> list[str]:
    return [*param.opts, *param.secondary_opts] if isinstance(param, TyperOption) else []


def _takes_value(param: Parameter | None, token: str) -> int:
    """1 when `token` is an option whose value is the next argument."""
    return int(isinstance(param, TyperOption) and not param.is_flag and "=" not in token)


def main() -> None:
    """Entry point: every failure becomes one line on stderr and a documented exit code."""
    try:
        code = app(args=hoist_global_options(sys.argv[1:]), standalone_mode=False)
    except NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(EXIT_USAGE)
    except NoSuchOption as exc:
        if re.fullmatch(r"-\d+(\.\d+)?", exc.option_name):
            console_err(f"error: {exc.option_name}: negative numbers are not allowed here")
        else:
            console_err(f"error: {exc.format_message()} (see --help)")
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        console_err(f"error: {exc.format_message()} (see --help)")
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        console_err("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except ElfError as exc:
        if verbose_requested():
            logging.getLogger("elf_async").exception("failed")
        console_err(f"error: {with_global_options(str(exc))}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console_err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
