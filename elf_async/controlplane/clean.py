"""`clean`: remove everything a fleet owns, in the order AWS enforces, resumable and idempotent.

Per thing: detach the policy, deactivate the certificate, detach it from the thing, delete
the thing, delete the certificate; then the fleet policy and a CA the fleet registered.
"Not found" counts as done. Local key files go only once their certificate is gone.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.config import Settings
from elf_async.controlplane.aws import NOT_FOUND_CODES, ControlPlane
from elf_async.controlplane.certs import thing_files
from elf_async.controlplane.fanout import fan_out
from elf_async.controlplane.fleet import (
    CONTROLLER_SUFFIX,
    FLEET_ATTRIBUTE,
    controller_policy_name,
    is_controller,
    policy_name,
    recorded_shard,
)
from elf_async.controlplane.ledger import LEDGER_FILE, Ledger, ThingRecord
from elf_async.controlplane.recovery import resolve_cert_intents
from elf_async.controlplane.session import FleetSession, open_fleet
from elf_async.errors import AccessDenied, AwsError, ErrorTally, RuntimeFailure, UsageError
from elf_async.progress import ProgressSink
from elf_async.shards import Shard

# DetachThingPrincipal propagates asynchronously: what follows may conflict for a while.
CONFLICTS = frozenset(
    {"DeleteConflictException", "CertificateStateException", "InvalidRequestException"}
)


@dataclass
class CleanSummary:
    attempted: int = 0
    removed: int = 0
    errors: ErrorTally = field(default_factory=ErrorTally)
    warnings: list[str] = field(default_factory=list)
    forgotten: bool = False  # the ledger and keys were deleted: nothing is left
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        return self.errors.total


async def _gone_ok(plane: ControlPlane, op: str, *, retry: bool = False, **params: Any) -> None:
    """Call `op`; a resource that is already gone counts as done."""
    try:
        await plane.call(op, retry_codes=CONFLICTS if retry else frozenset(), **params)
    except AwsError as exc:
        if exc.code not in NOT_FOUND_CODES:
            raise


class Cleaner:
    def __init__(
        self,
        plane: ControlPlane,
        ledger: Ledger,
        state_dir: Path,
        *,
        concurrency: int,
        progress: ProgressSink,
        owned: range | None = None,
    ) -> None:
        self.plane = plane
        self.ledger = ledger
        self.state_dir = state_dir
        self.concurrency = concurrency
        self.progress = progress
        self.owned = owned  # a shard's slice of thing indexes; None: every thing
        self.summary = CleanSummary()
        self._stop = False

    async def run(self) -> CleanSummary:
        started = time.monotonic()
        records = [
            r
            for r in self.ledger.things()
            if not r.gone and (self.owned is None or r.index in self.owned)
        ]
        self.summary.attempted = len(records)
        await fan_out(
            records,
            self._clean_thing,
            concurrency=self.concurrency,
            progress=self.progress,
            stopped=lambda: self._stop,
        )
        if not self.summary.failed and not self._stop:
            await self._fleet_resources()
        attempted = {r.name for r in records}  # not what an earlier clean removed
        self.summary.removed = sum(
            1 for r in self.ledger.things() if r.gone and r.name in attempted
        )
        self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    async def _clean_thing(self, record: ThingRecord) -> bool:
        return await self._guard(record.name, self._teardown(record))

    async def _guard(self, name: str, work: Any) -> bool:
        try:
            await work
        except AwsError as exc:
            self.summary.errors.record(name, exc)
            if isinstance(exc, AccessDenied):
                self._stop = True
            return False
        return True

    async def _teardown(self, record: ThingRecord) -> None:
        name, arn, cert_id = record.name, record.cert_arn, record.cert_id
        mark = self.ledger.mark
        if record.policy_state in ("intended", "created"):
            if arn:
                fleet_id = self.ledger.meta()["fleet_id"]
                policy = (controller_policy_name if is_controller(name) else policy_name)(fleet_id)
                await _gone_ok(self.plane, "DetachPolicy", policyName=policy, target=arn)
            mark(name, "policy", "removed")
        if record.cert_state == "created" and cert_id:
            try:
                await self.plane.call(
                    "UpdateCertificate", certificateId=cert_id, newStatus="INACTIVE"
                )
                mark(name, "cert", "inactive")
            except AwsError as exc:
                if exc.code not in NOT_FOUND_CODES:
                    raise
                mark(name, "cert", "removed")
        if record.principal_state in ("intended", "created"):
            if arn:
                await _gone_ok(self.plane, "DetachThingPrincipal", thingName=name, principal=arn)
            mark(name, "principal", "removed")
        if record.thing_state in ("intended", "created"):
            await _gone_ok(self.plane, "DeleteThing", retry=True, thingName=name)
            mark(name, "thing", "removed")
        if self.ledger.thing(name).cert_state == "inactive" and cert_id:
            await _gone_ok(self.plane, "DeleteCertificate", retry=True, certificateId=cert_id)
            mark(name, "cert", "removed")
        if self.ledger.thing(name).gone:
            for path in thing_files(self.state_dir, name):
                path.unlink(missing_ok=True)

    async def _fleet_resources(self) -> None:
        sharded = recorded_shard(self.ledger.meta()) is not None or self.owned is not None
        for resource in self.ledger.fleet_resources():
            if resource.state not in ("intended", "created"):
                continue
            if resource.kind == "policy" and sharded and await self._shared(resource.name):
                continue
            if resource.kind == "policy":
                work = _gone_ok(self.plane, "DeletePolicy", retry=True, policyName=resource.name)
            else:  # a CA this fleet registered
                work = self._delete_ca(resource.aws_id)
            if await self._guard(resource.name, work):
                self.ledger.mark_fleet_resource(resource.kind, resource.name, "removed")

    async def _shared(self, policy: str) -> bool:
        """Whether other shards' things still hold the fleet policy: it is theirs too, so it
        stays (noted in the ledger as removed from this shard's view); the last shard's clean,
        or `clean --fleet ID`, deletes it."""
        fleet_id = self.ledger.meta()["fleet_id"]
        mine = {r.name for r in self.ledger.things()}
        others = await _fleet_things(self.plane, fleet_id) - mine
        if not others:
            return False
        self.ledger.mark_fleet_resource("policy", policy, "removed")
        self.summary.warnings.append(
            f"left the policy {policy}: {len(others)} things of other shards still use it; the "
            f"last shard's clean, or `elf-async clean --fleet {fleet_id}`, deletes it"
        )
        return True

    async def _delete_ca(self, ca_id: str | None) -> None:
        if ca_id:
            await _gone_ok(
                self.plane, "UpdateCACertificate", certificateId=ca_id, newStatus="INACTIVE"
            )
            await _gone_ok(self.plane, "DeleteCACertificate", retry=True, certificateId=ca_id)


def forget(state_dir: Path, ledger: Ledger) -> None:
    """Drop the ledger and every key: only once nothing of the fleet is left in AWS,
    or when the user asked to forget local state (--only-local)."""
    ledger.close()
    for suffix in ("", "-wal", "-shm"):
        (state_dir / f"{LEDGER_FILE}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(state_dir / "certs", ignore_errors=True)


async def find_fleet(plane: ControlPlane, fleet_id: str, *, region: str) -> set[str]:
    """The things carrying ``elf_fleet=<fleet_id>``; none and no fleet policy either is a
    `RuntimeFailure` naming the fleet ids that the things in the region do carry (a typo'd id
    must not look like a fleet cleaned of nothing)."""
    names = await _fleet_things(plane, fleet_id)
    if names or await _policy_arn(plane, policy_name(fleet_id)):
        return names
    things = await _pages(plane, "ListThings", "things")
    found = sorted({t.get("attributes", {}).get(FLEET_ATTRIBUTE) for t in things} - {None})
    raise RuntimeFailure(
        f"--fleet {fleet_id}: no thing in {region} carries {FLEET_ATTRIBUTE}={fleet_id}, and "
        f"there is no policy {policy_name(fleet_id)}; "
        + (f"fleet ids found: {', '.join(found)}" if found else "no thing carries a fleet id")
    )


async def _policy_arn(plane: ControlPlane, policy: str) -> str | None:
    try:
        return str((await plane.call("GetPolicy", policyName=policy))["policyArn"])
    except AwsError as exc:
        if exc.code not in NOT_FOUND_CODES:
            raise
    return None


async def discover_fleet(
    plane: ControlPlane, ledger: Ledger, fleet_id: str, names: set[str]
) -> list[str]:
    """Rebuild a lost ledger from AWS: `names`, the things carrying ``elf_fleet=<fleet_id>``
    (`find_fleet`), and their certificates. Never touches a thing without that attribute, and
    adopts (to delete) only a certificate attached to fleet things alone and holding no other
    policy than the fleet's. Returns the warnings."""
    warnings: list[str] = []
    policy = policy_name(fleet_id)
    for name in sorted(names):
        principals = await _pages(plane, "ListThingPrincipals", "principals", thingName=name)
        arn = None
        for principal in principals:
            if arn is None and ":cert/" in principal:
                foreign = await _foreign_holders(plane, principal, names, policy)
                if not foreign:
                    arn = principal
                    continue
                reason = f"also held by {foreign}"
            else:
                reason = "a second principal" if ":cert/" in principal else "not a certificate"
            # Not provably ours: it lets go of our thing and our policy, and stays in AWS.
            if ":cert/" in principal:
                await _gone_ok(plane, "DetachPolicy", policyName=policy, target=principal)
            await _gone_ok(plane, "DetachThingPrincipal", thingName=name, principal=principal)
            warnings.append(f"{name}: detached {principal} ({reason}); it is left in AWS")
        ledger.adopt_thing(name, cert_arn=arn, has_policy=arn is not None)
    policy_arn = await _policy_arn(plane, policy)
    if policy_arn:
        warnings += await _discover_shared(plane, ledger, policy, names)
        ledger.mark_fleet_resource("policy", policy, "created", arn=policy_arn)
    controller = controller_policy_name(fleet_id)
    controller_arn = await _policy_arn(plane, controller)
    if controller_arn:
        warnings += await _discover_shared(
            plane, ledger, controller, set(), suffix=CONTROLLER_SUFFIX
        )
        ledger.mark_fleet_resource("policy", controller, "created", arn=controller_arn)
    return warnings


async def _discover_shared(
    plane: ControlPlane, ledger: Ledger, policy: str, names: set[str], *, suffix: str = ""
) -> list[str]:
    """The certificates the fleet policy holds besides its things' (a `--identity shared`
    fleet's one certificate), or the controller policy holds (with `suffix`, which marks
    their rows as the controller's): adopted when nothing but the policy holds them, else
    let go of."""
    warnings: list[str] = []
    known = {r.cert_arn for r in ledger.things()}
    targets = await _pages(plane, "ListTargetsForPolicy", "targets", policyName=policy)
    for arn in sorted(t for t in targets if ":cert/" in t and t not in known):
        foreign = await _foreign_holders(plane, arn, set(), policy)
        if foreign is None:
            name = f"certificate-{arn.rsplit('/', 1)[-1]}{suffix}"
            ledger.add_identity(name)
            ledger.mark(name, "cert", "created", cert_id=arn.rsplit("/", 1)[-1], cert_arn=arn)
            ledger.mark(name, "policy", "created")
            continue
        await _gone_ok(plane, "DetachPolicy", policyName=policy, target=arn)
        warnings.append(f"detached {policy} from {arn} (also held by {foreign}); it is left in AWS")
    return warnings


async def _fleet_things(plane: ControlPlane, fleet_id: str) -> set[str]:
    things = await _pages(
        plane, "ListThings", "things", attributeName=FLEET_ATTRIBUTE, attributeValue=fleet_id
    )
    return {
        t["thingName"] for t in things if t.get("attributes", {}).get(FLEET_ATTRIBUTE) == fleet_id
    }


async def _foreign_holders(
    plane: ControlPlane, cert_arn: str, fleet_things: set[str], policy: str
) -> str | None:
    """What else holds this certificate (things outside the fleet, other policies), or None
    when only the fleet does: then it is ours to delete."""
    things = await _pages(plane, "ListPrincipalThings", "things", principal=cert_arn)
    policies = await _pages(plane, "ListAttachedPolicies", "policies", target=cert_arn)
    others = sorted(set(things) - fleet_things)
    others += sorted(f"policy {p['policyName']}" for p in policies if p["policyName"] != policy)
    return ", ".join(others) or None


async def _pages(plane: ControlPlane, op: str, key: str, **params: Any) -> list[Any]:
    """Every item of a paginated IoT list call (nextToken, or marker for policies)."""
    items: list[Any] = []
    while True:
        page = await plane.call(op, **params)
        items += page.get(key, [])
        token = page.get("nextToken")
        marker = page.get("nextMarker")
        if token:
            params["nextToken"] = token
        elif marker:
            params["marker"] = marker
        else:
            return items


@dataclass
class CleanResult:
    summary: CleanSummary
    fleet_id: str
    api: dict[str, dict[str, float]]

    def as_json(self) -> dict[str, object]:
        s = self.summary
        return {
            "fleet_id": self.fleet_id,
            "attempted": s.attempted,
            "removed": s.removed,
            "failed": s.failed,
            "forgotten": s.forgotten,
            "elapsed_s": round(s.elapsed_s, 3),
            "errors": s.errors.as_json(),
            "warnings": s.warnings,
            "api": self.api,
        }


async def clean_fleet(
    settings: Settings,
    *,
    fleet_id: str | None,
    concurrency: int,
    progress: ProgressSink,
    api_rates: dict[str, float] | None = None,
    shard: Shard | None = None,
) -> CleanResult | None:
    """Clean the fleet of the state dir, or find fleet `fleet_id` in AWS when the ledger is lost.

    None when the ledger records no fleet (a create that stopped before it made anything):
    that ledger is forgotten without a call to AWS, since it does not even say where its
    fleet would live."""
    if fleet_id is None:
        with Ledger.open(settings.state_dir) as ledger:
            if "fleet_id" not in ledger.meta():  # Ledger.open refused one with things
                forget(settings.state_dir, ledger)
                return None

    def check(meta: dict[str, str]) -> None:
        if fleet_id and meta.get("fleet_id") not in (None, fleet_id):
            raise UsageError(
                f"{settings.state_dir} holds fleet {meta['fleet_id']}, not {fleet_id}: "
                "use another --state-dir for --fleet"
            )

    async with open_fleet(
        settings,
        create=fleet_id is not None,
        concurrency=concurrency,
        api_rates=api_rates,
        check=check,
    ) as session:
        return await clean_with(
            session, fleet_id=fleet_id, concurrency=concurrency, progress=progress, shard=shard
        )


async def clean_with(
    session: FleetSession,
    *,
    fleet_id: str | None,
    concurrency: int,
    progress: ProgressSink,
    shard: Shard | None = None,
) -> CleanResult:
    """`clean_fleet` on an open fleet (its control plane may be an in-memory one). With
    `shard`, only that shard's slice of the fleet's things; with `fleet_id` and no shard,
    every thing carrying the fleet's attribute, other shards' included."""
    ledger, target, plane = session.ledger, session.target, session.plane
    meta = ledger.meta()
    warnings: list[str] = []
    if fleet_id and "fleet_id" not in meta:
        names = await find_fleet(plane, fleet_id, region=target.region)  # before the ledger
        ledger.set_meta(
            fleet_id=fleet_id,
            region=target.region,
            account=session.account,
            endpoint_url=target.endpoint_url,
            profile=target.profile,
        )
        warnings = await discover_fleet(plane, ledger, fleet_id, names)
        meta = ledger.meta()
    elif fleet_id and shard is None:  # a shard's ledger: the other shards' things too
        others = await _fleet_things(plane, fleet_id) - {r.name for r in ledger.things()}
        warnings = await discover_fleet(plane, ledger, fleet_id, others)
        meta = ledger.meta()
    ca_file = Path(meta["ca_cert"]) if "ca_cert" in meta else None
    recovery = await resolve_cert_intents(
        session,
        cert_mode=meta.get("cert_mode", "aws"),
        ca_pem=ca_file.read_text() if ca_file and ca_file.is_file() else None,
    )
    cleaner = Cleaner(
        plane,
        ledger,
        session.state_dir,
        concurrency=concurrency,
        progress=progress,
        owned=_owned(shard, meta, len(ledger.things())),
    )
    summary = await cleaner.run()
    summary.warnings = warnings + recovery.unresolved + summary.warnings
    leftovers = [r for r in ledger.fleet_resources() if r.state in ("intended", "created")]
    staying = [r for r in ledger.things() if not r.gone]  # outside the shard's slice
    if not summary.failed and not recovery.unresolved and not leftovers and not staying:
        forget(session.state_dir, ledger)
        summary.forgotten = True
    return CleanResult(summary=summary, fleet_id=meta["fleet_id"], api=plane.api_report())


def _owned(shard: Shard | None, meta: dict[str, str], things: int) -> range | None:
    """The thing indexes a clean with `shard` may touch: its slice of the fleet (of the size
    the shard was created with, else of the things this ledger holds); None: all of them."""
    if shard is None:
        return None
    recorded = recorded_shard(meta)
    if recorded is not None and recorded[0] != shard:
        raise UsageError(
            f"this state dir holds shard {recorded[0]} of fleet {meta['fleet_id']}, "
            f"not --shard {shard}"
        )
    return shard.indexes(recorded[1] if recorded else things)


def forget_local(state_dir: Path, *, confirm: Callable[[str], bool]) -> int | None:
    """--only-local: forget the ledger and keys once `confirm` (which shows it) agreed to what
    stays in AWS. Returns how many things stay in AWS, or None when nothing was forgotten."""
    if not Ledger.exists(state_dir):
        return None
    ledger = Ledger.open(state_dir)
    staying = [r for r in ledger.things() if not r.gone]
    fleet_id = ledger.meta().get("fleet_id")
    resources = [f"{r.kind} {r.name}" for r in ledger.fleet_resources() if r.state != "removed"]
    listing = ", ".join([r.name for r in staying[:10]] + (["…"] if len(staying) > 10 else []))
    summary = (
        f"fleet {fleet_id}: {len(staying)} things stay in AWS ({listing or 'none'}) with their "
        f"certificates; also {', '.join(resources) or 'no fleet resources'}. "
        f"`elf-async clean --fleet {fleet_id}` can still find the things later."
        if fleet_id
        else "the ledger records no fleet: nothing of it is in AWS."
    )
    if not confirm(summary):
        ledger.close()
        return None
    forget(state_dir, ledger)
    return len(staying)
