"""The one way into a fleet for `create` and `clean`: its ledger, where its AWS calls go, and
the paced control plane, opened in an order that refuses bad input and a wrong account
before anything in AWS changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from elf_async.config import Settings, Target, resolve_target
from elf_async.controlplane.aws import ControlPlane, check_account, configured_region, connect
from elf_async.controlplane.ledger import Ledger


@dataclass(frozen=True, slots=True)
class FleetSession:
    """What the create, clean and recovery engines work on. Tests build one by hand around an
    in-memory control plane."""

    ledger: Ledger
    state_dir: Path
    target: Target
    account: str
    plane: ControlPlane


@asynccontextmanager
async def open_fleet(
    settings: Settings,
    *,
    create: bool,
    concurrency: int,
    api_rates: Mapping[str, float] | None = None,
    check: Callable[[dict[str, str]], object] = lambda meta: None,
) -> AsyncIterator[FleetSession]:
    """Open the ledger (made when `create`), let `check` refuse the request against the
    fleet's record, resolve the target (what the user said, else the fleet's), check that
    the credentials belong to the fleet's account, then open the paced control plane."""
    with Ledger.open(settings.state_dir, create=create) as ledger:
        meta = ledger.meta()
        check(meta)
        target = resolve_target(
            settings,
            meta,
            configured_region=configured_region(settings.profile or meta.get("profile")),
        )
        account = await check_account(target, meta)
        async with connect(target, concurrency=concurrency, api_rates=api_rates) as plane:
            yield FleetSession(ledger, settings.state_dir, target, account, plane)
