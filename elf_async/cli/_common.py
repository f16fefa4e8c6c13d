"""What every command shares: the settings, output helpers, running a coroutine on uvloop."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvloop
from typer import _click as click  # typer's own click, whose Context its commands receive
from typer.core import TyperCommand

from elf_async.cli import _scenario
from elf_async.cli._args import SHARD_HELP
from elf_async.cli._options import check_utf8
from elf_async.config import DEFAULT_STATE_DIR, Settings
from elf_async.controlplane.aws import AWS_DEFAULT_QUOTAS, default_api_rates
from elf_async.controlplane.fleet import fleet_id_of_run, fleet_id_problem
from elf_async.errors import UsageError
from elf_async.shards import Shard
from elf_async.units import parse_api_rate

T = TypeVar("T")
_given: Settings | None = None  # the global options as given, for main()'s error lines


def remember(settings: Settings) -> None:
    global _given
    _given = settings


def verbose_requested() -> bool:
    return _given is not None and _given.verbose


def with_global_options(text: str) -> str:
    """Each command `text` suggests (`elf-async create`) with the global options the user gave
    (--state-dir, --local, --region, ...) that it does not name already, so that it runs as
    shown: a hint that drops --local or --state-dir points at another fleet."""
    if _given is None:
        return text
    given = [
        ("--state-dir", str(_given.state_dir) if _given.state_dir != DEFAULT_STATE_DIR else None),
        ("--local", "" if _given.local else None),
        ("--region", _given.region),
        ("--profile", _given.profile),
        ("--endpoint-url", _given.endpoint_url),
    ]

    def fill(match: re.Match[str]) -> str:
        command = match.group(1)
        words = command.split()
        stack = "local" in words  # `local up|status|down` manage the stack: no --local there
        extra = [
            f"{option} {shlex.quote(value)}" if value else option
            for option, value in given
            if value is not None and option not in words and not (stack and option == "--local")
        ]
        return "`" + " ".join(["elf-async", *extra, command]) + "`"

    return re.sub(r"`elf-async ([^`]*)`", fill, text)


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def check_text_params(ctx: click.Context) -> None:
    """Every text option and argument of the command `ctx` parsed must be valid UTF-8."""
    for param in ctx.command.params:
        name = param.opts[0] if param.param_type_name == "option" else param.name.upper()
        check_utf8(name, ctx.params.get(param.name))


class Command(TyperCommand):
    """A command whose options are checked as text (valid UTF-8) before it runs, and whose
    --scenario (SendArgs.scenario, an eager option) is read before the other options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.name == "scenario":
                param.callback = _scenario.read

    def invoke(self, ctx: click.Context) -> Any:
        check_text_params(ctx)
        return super().invoke(ctx)


def console_err(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"elf-async: {message}", file=sys.stderr, flush=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh uvloop event loop."""
    return uvloop.run(coro)


def print_api_table(api: dict[str, dict[str, float]]) -> None:
    """Per-API pacing: what we achieved against what we paced at, and AWS's push-back."""
    if not api:
        return
    print(
        f"  {'API':<28}{'calls':>7}{'throttled':>10}{'retried':>9}{'achieved/s':>12}{'paced/s':>9}"
    )
    for name, row in api.items():
        print(
            f"  {name:<28}{row['calls']:>7.0f}{row['throttled']:>10.0f}{row['retried']:>9.0f}"
            f"{row['achieved_per_s']:>12.2f}{row['paced_at_per_s']:>9.2f}"
        )


# Control-plane options that create, clean and run share.
ConcurrencyOption = Annotated[int, typer.Option(help="AWS calls in flight.", min=1, max=256)]
ApiRateOption = Annotated[
    list[str] | None,
    typer.Option(help="Pace one API, e.g. CreateThing=30/s (repeatable).", show_default=False),
]
# Fleet options that create and run share.
CertModeOption = Annotated[
    str | None,
    typer.Option(
        help="aws: AWS makes key and certificate; csr: key made here, AWS signs a CSR; "
        "ca: key made here, certificate signed by --ca-cert and registered. [default: csr]"
    ),
]
KeyTypeOption = Annotated[
    str | None, typer.Option(help="rsa (2048) or ec (P-256), for csr and ca. [default: ec]")
]
CaCertOption = Annotated[Path | None, typer.Option(help="CA certificate for --cert-mode ca.")]
CaKeyOption = Annotated[Path | None, typer.Option(help="CA private key for --cert-mode ca.")]
RegisterCaOption = Annotated[
    bool, typer.Option(help="Register --ca-cert in AWS IoT first (clean removes it).")
]
TopicRootOption = Annotated[
    str | None, typer.Option(help="Topics the fleet policy allows. [default: elf]")
]
SharedTopicsOption = Annotated[
    bool,
    typer.Option(
        "--shared-topics",
        help="Let every thing publish, receive and subscribe anywhere under the topic root "
        "(a thing may then publish as, or read, any other). [default: each thing only under "
        "<topic root>/<its name>]",
        show_default=False,
    ),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        help="thing: a registry thing and a certificate per device (AWS calls per device). "
        "shared: no things, one certificate and a policy that lets every device connect as "
        "<prefix>-NNNNN (any COUNT in seconds). [default: thing]",
        show_default=False,
    ),
]
MaxThingsOption = Annotated[int, typer.Option(help="COUNT above this needs --yes.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Skip the --max-things check.")]


def api_rates(items: list[str] | None, shard: Shard | None = None) -> dict[str, float]:
    """--api-rate NAME=RATE for the APIs elf-async paces: a typo would silently pace nothing.
    A shard paces every API (given or default) at its share of the account's rate."""
    rates = dict(parse_api_rate(item) for item in items or [])
    unknown = sorted(set(rates) - set(AWS_DEFAULT_QUOTAS))
    if unknown:
        raise UsageError(
            f"--api-rate {unknown[0]}: not an API elf-async calls; "
            f"one of {', '.join(sorted(AWS_DEFAULT_QUOTAS))}"
        )
    if shard is None:
        return rates
    return {name: shard.share(rate) for name, rate in default_api_rates(rates).items()}


def fleet_id_of(fleet_id: str | None, run_id: str | None) -> str | None:
    """--fleet-id checked, or the one --run-id derives; None: a new random one."""
    if fleet_id is not None and run_id is not None:
        raise UsageError("--fleet-id and --run-id cannot be used together")
    if fleet_id is not None and (problem := fleet_id_problem(fleet_id)):
        raise UsageError(problem)
    if run_id is not None and not run_id.strip():
        raise UsageError("--run-id: give the run's id (any text, the same for every shard)")
    return fleet_id_of_run(run_id) if run_id is not None else fleet_id


def check_shard_fleet(shard: Shard | None, fleet_id: str | None) -> None:
    """Shards make one fleet only when they share its id: a random one each would not."""
    if shard is not None and fleet_id is None:
        raise UsageError(
            f"shard {shard}: give every shard the same --fleet-id (or --run-id), "
            "so that they make one fleet"
        )


# Sharding options that create, clean and run share (send and subscribe: cli._args).
ShardOption = Annotated[str | None, typer.Option(help=SHARD_HELP, show_default=False)]
FleetIdOption = Annotated[
    str | None,
    typer.Option(
        help="The fleet's id (8 lower-case letters and digits), the same for every shard. "
        "[default: a random one]",
        show_default=False,
    ),
]
RunIdOption = Annotated[
    str | None, typer.Option(help="Derive the fleet id from this run's id (e.g. a CI run number).")
]
