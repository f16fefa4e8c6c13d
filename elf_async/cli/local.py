"""`elf-async local up | status | down`: the embedded stand-in for AWS IoT Core."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from elf_async.cli._common import console_err, settings
from elf_async.controlplane.ledger import Ledger
from elf_async.errors import LedgerError, UsageError
from elf_async.local import stack as localstack

app = typer.Typer(
    name="local",
    help="A local stand-in for AWS IoT Core (moto + mosquitto with mutual TLS on 127.0.0.1): "
    "no AWS account needed. Target it with the global --local.",
    no_args_is_help=True,
)


def describe(stack: localstack.LocalStack) -> str:
    return (
        f"  control plane  {stack.endpoint_url}  (moto, pid {stack.moto.pid})\n"
        f"  MQTT broker    {stack.mqtt_host}:{stack.mqtt_port}  "
        f"(mosquitto, mutual TLS, pid {stack.mosquitto.pid})\n"
        f"  local CA       {stack.ca_cert}  (registered as {stack.ca_certificate_id})\n"
        f"  logs           {stack.directory}/moto.log, {stack.broker_dir}/mosquitto.log"
    )


def _state_hint(state_dir: Path) -> str:
    return "" if state_dir == Path(".elf") else f" --state-dir {state_dir}"


@app.command("up")
def up(ctx: typer.Context) -> None:
    """Start moto and mosquitto in the background (harmless when they already run)."""
    options = settings(ctx)
    try:
        stack, started = localstack.up(options.state_dir, region=options.region)
    except OSError as exc:  # a read-only or full state dir
        raise UsageError(
            f"{exc.filename or options.state_dir}: {exc.strerror or exc} "
            f"(`local up` writes the local CA, logs and its record in {options.state_dir})"
        ) from exc
    print(f"local stack {'started' if started else 'already running'}:\n{describe(stack)}")
    if not options.quiet:
        hint = _state_hint(options.state_dir)
        print(
            f"use it: elf-async{hint} --local create 10, then --local send; "
            f"stop it: elf-async{hint} local down"
        )


@app.command("status")
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what the local stack runs."""
    options = settings(ctx)
    stack = localstack.load(options.state_dir)
    running = stack is not None and stack.running()
    if as_json:
        document = {"running": running, **(stack.to_json() if stack else {})}
        print(json.dumps(document, indent=2))
    elif stack is None:
        print("no local stack is running")
    elif running:
        print(f"local stack running since {stack.started_at}:\n{describe(stack)}")
    else:
        print(
            f"the local stack is broken (moto {'up' if stack.moto.alive() else 'gone'}, "
            f"mosquitto {'up' if stack.mosquitto.alive() else 'gone'}): "
            f"`elf-async{_state_hint(options.state_dir)} local up` restarts it"
        )


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop exactly the processes `local up` started (nothing when none runs)."""
    options = settings(ctx)
    stack = localstack.down(options.state_dir)
    if stack is None:
        print("no local stack is running")
        return
    print(f"local stack stopped (moto pid {stack.moto.pid}, mosquitto pid {stack.mosquitto.pid})")
    if _fleet_lived_in(options.state_dir, stack):
        console_err(
            "warning: the fleet in this state dir lived in that stack and is gone with it; "
            f"forget it with `elf-async{_state_hint(options.state_dir)} clean --only-local --yes`"
        )


def _fleet_lived_in(state_dir: Path, stack: localstack.LocalStack) -> bool:
    if not Ledger.exists(state_dir):
        return False
    with contextlib.suppress(LedgerError), Ledger.open(state_dir) as ledger:
        return ledger.meta().get("endpoint_url") == stack.endpoint_url
    return False
