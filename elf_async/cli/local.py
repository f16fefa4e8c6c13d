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
from elf_async.local.mosquitto import LOCAL_AUTHORIZER, LOCAL_PASSWORD, LOCAL_USERNAME

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
        + (
            ""
            if stack.listeners is None
            else f"  WebSocket      {stack.mqtt_host}:{stack.listeners.websocket}  (TLS, "
            "--transport wss; the SigV4 signature is not checked locally)\n"
            f"  password       {stack.mqtt_host}:{stack.listeners.password}  (TLS, "
            f"--auth custom:{LOCAL_AUTHORIZER} --username {LOCAL_USERNAME} --password "
            f"{LOCAL_PASSWORD})\n"
        )
        + f"  local CA       {stack.ca_cert}  (registered as {stack.ca_certificate_id})\n"
        f"  logs           {stack.directory}/moto.log, {stack.broker_dir}/mosquitto.log"
    )


def _did(result: localstack.Up) -> str:
    if result.started:
        return "started"
    if not result.restarted:
        return "already running"
    where = "its port" if len(result.restarted) == 1 else "their ports"
    replayed = ", moto with its recorded state replayed" if "moto" in result.restarted else ""
    return f"restarted {' and '.join(result.restarted)} on {where}{replayed}"


@app.command("up")
def up(ctx: typer.Context) -> None:
    """Start moto and mosquitto in the background; on a stack with a dead part, restart only
    that part, on its port and with its state (harmless when both run)."""
    options = settings(ctx)
    try:
        result = localstack.up(options.state_dir, region=options.region)
    except OSError as exc:  # a read-only or full state dir
        raise UsageError(
            f"{exc.filename or options.state_dir}: {exc.strerror or exc} "
            f"(`local up` writes the local CA, logs and its record in {options.state_dir})"
        ) from exc
    print(f"local stack {_did(result)}:\n{describe(result.stack)}")
    if not options.quiet:
        state_dir = options.state_dir
        print(
            f"use it: {localstack.command(state_dir, '--local create 10')}, then --local send; "
            f"stop it: {localstack.command(state_dir, 'local down')}"
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
        document: dict[str, object] = {"running": running, **(stack.to_json() if stack else {})}
        if stack is not None and not running:
            document["advice"] = localstack.advice(stack)
        print(json.dumps(document, indent=2))
    elif stack is None:
        print("no local stack is running")
    elif running:
        print(f"local stack running since {stack.started_at}:\n{describe(stack)}")
    else:
        print(f"the local stack is broken: {localstack.advice(stack)}")


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
            f"forget it with {localstack.command(options.state_dir, 'clean --only-local --yes')}"
        )


def _fleet_lived_in(state_dir: Path, stack: localstack.LocalStack) -> bool:
    if not Ledger.exists(state_dir):
        return False
    with contextlib.suppress(LedgerError), Ledger.open(state_dir) as ledger:
        return ledger.meta().get("endpoint_url") == stack.endpoint_url
    return False
