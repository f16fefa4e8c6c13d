"""Finding certificates whose creation was interrupted before the ledger learned their id.

A certificate is the one resource AWS names itself, so a kill between AWS creating it and
the ledger committing its id leaves an ``intended`` record without an id. Each cert mode
resolves it as exactly as the API allows:

- ``ca``: the signed certificate is on disk before the call; registering it again either
  registers it or answers ResourceAlreadyExists with its id. Exact.
- ``csr`` and ``aws``: the response's certificate file is written before the ledger commit,
  so a file on disk is matched to a recent certificate by its PEM (exact). With no file,
  ``csr`` matches a recent certificate by our public key, or by its subject, which is the
  thing's name with the fleet's random id in it; ``aws`` falls back
  to recent certificates that are ACTIVE, unknown to the ledger and attached to nothing,
  and deletes them only when there are no more of them than unresolved intents.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.controlplane.aws import ControlPlane
from elf_async.controlplane.certs import (
    common_name,
    load_private_key,
    own_public_key_der,
    public_key_der,
    thing_files,
)
from elf_async.controlplane.ledger import Ledger, ThingRecord
from elf_async.errors import AwsError

log = logging.getLogger(__name__)
WINDOW_BEFORE_S = 300.0  # clock skew between this machine and AWS
WINDOW_AFTER_S = 900.0


@dataclass
class RecoveryResult:
    adopted: int = 0
    deleted_orphans: int = 0
    unresolved: list[str] = field(default_factory=list)  # human-readable warnings


async def resolve_cert_intents(
    plane: ControlPlane, ledger: Ledger, state_dir: Path, *, cert_mode: str, ca_pem: str | None
) -> RecoveryResult:
    """Give every ``intended`` certificate without an id a definite state."""
    result = RecoveryResult()
    pending = [r for r in ledger.things() if r.cert_state == "intended" and not r.cert_id]
    if not pending:
        return result
    if cert_mode == "ca":
        for record in pending:
            await _reregister(plane, ledger, state_dir, record, ca_pem, result)
        return result
    known = {r.cert_id for r in ledger.things() if r.cert_id}
    since = min(r.cert_intent_at or 0.0 for r in pending) - WINDOW_BEFORE_S
    recent = [
        c for c in await _recent_certificates(plane, since) if c["certificateId"] not in known
    ]
    unmatched: list[ThingRecord] = []
    for record in pending:
        match = await _match_by_files(plane, state_dir, record, recent, cert_mode)
        if match is None:
            unmatched.append(record)
            continue
        recent.remove(match)
        ledger.mark(
            record.name,
            "cert",
            "created",
            cert_id=match["certificateId"],
            cert_arn=match["certificateArn"],
        )
        result.adopted += 1
    if cert_mode == "aws" and unmatched:
        await _delete_unclaimed(plane, ledger, unmatched, recent, result)
    else:
        for record in unmatched:
            ledger.mark(record.name, "cert", "pending")
    return result


async def _reregister(
    plane: ControlPlane,
    ledger: Ledger,
    state_dir: Path,
    record: ThingRecord,
    ca_pem: str | None,
    result: RecoveryResult,
) -> None:
    _, crt_path = thing_files(state_dir, record.name)
    if not crt_path.exists():  # signed and written before the intent: the call never ran
        ledger.mark(record.name, "cert", "pending")
        return
    try:
        response = await plane.call(
            "RegisterCertificate",
            certificatePem=crt_path.read_text(),
            caCertificatePem=ca_pem,
            status="ACTIVE",
        )
        cert_id, cert_arn = response["certificateId"], response["certificateArn"]
    except AwsError as exc:
        if exc.code != "ResourceAlreadyExistsException" or "resourceId" not in exc.details:
            raise
        cert_id, cert_arn = str(exc.details["resourceId"]), str(exc.details["resourceArn"])
    ledger.mark(record.name, "cert", "created", cert_id=cert_id, cert_arn=cert_arn)
    result.adopted += 1


async def _recent_certificates(plane: ControlPlane, since: float) -> list[dict[str, Any]]:
    """Certificates created after `since` (epoch seconds), newest first."""
    found: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        params: dict[str, Any] = {"pageSize": 250, "ascendingOrder": False}
        if marker:
            params["marker"] = marker
        page = await plane.call("ListCertificates", **params)
        older = False
        for cert in page.get("certificates", []):
            created = cert.get("creationDate")
            stamp = created.timestamp() if isinstance(created, dt.datetime) else 0.0
            if stamp < since:
                older = True  # AWS sorts by date; moto does not, so keep reading the page
                continue
            found.append(cert)
        marker = page.get("nextMarker")
        if not marker or older:
            return found


async def _match_by_files(
    plane: ControlPlane,
    state_dir: Path,
    record: ThingRecord,
    recent: list[dict[str, Any]],
    cert_mode: str,
) -> dict[str, Any] | None:
    key_path, crt_path = thing_files(state_dir, record.name)
    wanted_pem = crt_path.read_text().strip() if crt_path.exists() else None
    wanted_key = None
    if wanted_pem is None and cert_mode == "csr" and key_path.exists():
        wanted_key = own_public_key_der(load_private_key(key_path))
    if wanted_pem is None and wanted_key is None:
        return None
    for cert in recent:
        described = await plane.call("DescribeCertificate", certificateId=cert["certificateId"])
        pem = str(described["certificateDescription"]["certificatePem"]).strip()
        if pem == wanted_pem:
            return cert
        if wanted_key is not None and (
            public_key_der(pem) == wanted_key or common_name(pem) == record.name
        ):
            return cert
    return None


async def _delete_unclaimed(
    plane: ControlPlane,
    ledger: Ledger,
    unmatched: list[ThingRecord],
    recent: list[dict[str, Any]],
    result: RecoveryResult,
) -> None:
    """The aws-mode fallback: delete unattached recent certificates, never more than we lost."""
    windows = [
        ((r.cert_intent_at or 0.0) - WINDOW_BEFORE_S, (r.cert_intent_at or 0.0) + WINDOW_AFTER_S)
        for r in unmatched
    ]
    candidates = []
    for cert in recent:
        created = cert["creationDate"].timestamp()
        if cert.get("status") != "ACTIVE" or not any(a <= created <= b for a, b in windows):
            continue
        things = await plane.call("ListPrincipalThings", principal=cert["certificateArn"])
        policies = await plane.call("ListAttachedPolicies", target=cert["certificateArn"])
        if not things.get("things") and not policies.get("policies"):
            candidates.append(cert)
    if len(candidates) > len(unmatched):
        ids = ", ".join(c["certificateId"][:12] for c in candidates)
        result.unresolved.append(
            f"{len(unmatched)} certificate creation(s) were interrupted and {len(candidates)} "
            f"unattached recent certificates could be theirs ({ids}…): not deleting any; "
            "check them in the AWS console"
        )
        return
    for cert in candidates:
        await plane.call(
            "UpdateCertificate", certificateId=cert["certificateId"], newStatus="INACTIVE"
        )
        await plane.call("DeleteCertificate", certificateId=cert["certificateId"])
        log.info("deleted orphaned certificate %s", cert["certificateId"])
        result.deleted_orphans += 1
    for record in unmatched:
        ledger.mark(record.name, "cert", "pending")
