"""`elf-async status`: what the ledger knows about the fleet (no AWS call)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from elf_async.cli._common import settings, with_global_options
from elf_async.controlplane.status import fleet_status


def command(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the fleet: id, region, endpoint, things by state, policy, where the keys are."""
    status = fleet_status(settings(ctx).state_dir)
    if json_output:
        print(json.dumps(status, indent=2))
        return
    if not status["exists"]:
        empty = status.get("empty_ledger")
        hint = " (its ledger records nothing: `elf-async clean --only-local --yes` deletes it)"
        print(f"no fleet in {status['state_dir']}" + (with_global_options(hint) if empty else ""))
        return
    for label, key in (
        ("fleet", "fleet_id"),
        ("region", "region"),
        ("account", "account"),
        ("control plane", "endpoint_url"),
        ("mqtt endpoint", "mqtt_endpoint"),
        ("thing prefix", "prefix"),
        ("cert mode", "cert_mode"),
        ("topic root", "topic_root"),
        ("topic scope", "topic_scope"),
        ("identity", "identity"),
        ("devices", "devices"),
        ("keys", "keys_dir"),
    ):
        print(f"{label:>14}: {status.get(key) or '-'}")
    shared = status.get("shared_certificate")
    if shared:
        print(f"{'certificate':>14}: {shared['name']} ({shared['state']}, shared by every device)")
    controller = status.get("controller")
    if controller:
        print(f"{'controller':>14}: {controller['name']} ({controller['state']}, sends commands)")
    things = status["things"]
    assert isinstance(things, dict)
    by_state = (
        ", ".join(f"{n} {state}" for state, n in sorted(things["by_state"].items())) or "none"
    )
    print(f"{'things':>14}: {things['total']} ({by_state})")
    for resource in status["fleet_resources"]:
        print(f"{resource['kind']:>14}: {resource['name']} ({resource['state']})")
