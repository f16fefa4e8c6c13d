"""Finding certificates whose creation was interrupted before the ledger learned their id.

A certificate is the one resource AWS names itself, so a kill between AWS creating it and
the ledger committing its id leaves an ``intended`` record without an id. A certificate is
adopted (and so later deleted by `clean`) only when it is provably ours:

- ``ca``: the signed certificate is on disk before the call; registering it again either
  registers it or answers ResourceAlreadyExists with its id. Exact.
- ``csr`` (the default): the key is made here before the call, so a recent certificate whose
  public key is ours is ours. A stand-in that ignores the CSR's key (moto) still copies its
  subject: the thing's name as CN with the fleet's random id in the subject proves it too.
- ``aws`` and ``csr``: the response's certificate file is written before the ledger commit,
  so a file on disk is matched to a recent certificate by its PEM. Exact.

Nothing else is ever adopted or deleted. In ``aws`` mode a lost response leaves nothing to
prove ownership with: recent ACTIVE certificates attached to nothing are listed in
`RecoveryResult.unresolved`, each with the command that deletes it, for a human to decide.
The intent is then settled (``pending``) so the thing gets a new certificate.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.config import Target
from elf_async.controlplane.aws import ControlPlane
from elf_async.controlplane.certs import (
    common_name,
    load_private_key,
    own_public_key_der,
    public_key_der,
    subject_text,
    thing_files,
)
from elf_async.controlplane.ledger import Ledger, ThingRecord
from elf_async.controlplane.session import FleetSession
from elf_async.errors import AwsError

log = logging.getLogger(__name__)
WINDOW_BEFORE_S = 300.0  # clock skew between this machine and AWS
WINDOW_AFTER_S = 900.0


@dataclass
class RecoveryResult:
    adopted: int = 0
    # One line per certificate that an interrupted create may have made but that cannot be
    # proven ours: left in AWS, with the command that deletes it. A verdict fails on these.
    unresolved: list[str] = field(default_factory=list)


async def resolve_cert_intents(
    session: FleetSession, *, cert_mode: str, ca_pem: str | None
) -> RecoveryResult:
    """Give every ``intended`` certificate without an id a definite state."""
    plane, ledger, state_dir = session.plane, session.ledger, session.state_dir
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
    pems = _Pems(plane)
    fleet_id = ledger.meta().get("fleet_id", "")
    unproven: list[ThingRecord] = []
    for record in pending:
        match = await _proven_match(pems, state_dir, record, recent, fleet_id)
        if match is None:
            ledger.mark(record.name, "cert", "pending")
            unproven.append(record)
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
    if unproven:
        suspects = await _suspects(plane, pems, unproven, recent, cert_mode)
        result.unresolved += [_listing(cert, names, session.target) for cert, names in suspects]
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
            if _created(cert) < since:
                older = True  # AWS sorts by date; moto does not, so keep reading the page
                continue
            found.append(cert)
        marker = page.get("nextMarker")
        if not marker or older:
            return found


def _created(cert: dict[str, Any]) -> float:
    created = cert.get("creationDate")
    return created.timestamp() if isinstance(created, dt.datetime) else 0.0


class _Pems:
    """Each certificate's PEM, described once however many records look at it."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane
        self._pems: dict[str, str] = {}

    async def of(self, cert_id: str) -> str:
        if cert_id not in self._pems:
            described = await self._plane.call("DescribeCertificate", certificateId=cert_id)
            self._pems[cert_id] = str(described["certificateDescription"]["certificatePem"]).strip()
        return self._pems[cert_id]


async def _proven_match(
    pems: _Pems,
    state_dir: Path,
    record: ThingRecord,
    recent: list[dict[str, Any]],
    fleet_id: str,
) -> dict[str, Any] | None:
    """The recent certificate that is provably this record's: its PEM is our file, or its public
    key is ours, or its subject names this thing and our fleet."""
    key_path, crt_path = thing_files(state_dir, record.name)
    wanted_pem = crt_path.read_text().strip() if crt_path.exists() else None
    wanted_key = None
    if wanted_pem is None and key_path.exists():  # csr: the key is made before the call
        wanted_key = own_public_key_der(load_private_key(key_path))
    if wanted_pem is None and wanted_key is None:
        return None
    for cert in recent:
        pem = await pems.of(cert["certificateId"])
        if pem == wanted_pem or (wanted_key is not None and public_key_der(pem) == wanted_key):
            return cert
    for cert in recent if wanted_key is not None and fleet_id else []:  # a stand-in's copy
        pem = await pems.of(cert["certificateId"])
        if common_name(pem) == record.name and fleet_id in subject_text(pem):
            return cert
    return None


async def _suspects(
    plane: ControlPlane,
    pems: _Pems,
    unproven: list[ThingRecord],
    recent: list[dict[str, Any]],
    cert_mode: str,
) -> list[tuple[dict[str, Any], list[str]]]:
    """Certificates that may be an unproven record's, with the names of those records.

    ``aws``: ACTIVE, attached to nothing and created around an interrupted call. ``csr``: a
    certificate from our key is always proven, so only one whose CN is the thing's name but
    whose subject does not name the fleet (a CSR from before the fleet id was put there).
    """
    found: list[tuple[dict[str, Any], list[str]]] = []
    for cert in recent:
        if cert_mode == "csr":
            name = common_name(await pems.of(cert["certificateId"]))
            names = [r.name for r in unproven if r.name == name]
        else:
            names = [r.name for r in unproven if _in_window(cert, r)]
            if not names or cert.get("status") != "ACTIVE" or await _attached(plane, cert):
                continue
        if names:
            found.append((cert, names))
    return found


def _in_window(cert: dict[str, Any], record: ThingRecord) -> bool:
    intent = record.cert_intent_at or 0.0
    return intent - WINDOW_BEFORE_S <= _created(cert) <= intent + WINDOW_AFTER_S


async def _attached(plane: ControlPlane, cert: dict[str, Any]) -> bool:
    arn = cert["certificateArn"]
    things = await plane.call("ListPrincipalThings", principal=arn)
    policies = await plane.call("ListAttachedPolicies", target=arn)
    return bool(things.get("things") or policies.get("policies"))


def _listing(cert: dict[str, Any], names: list[str], target: Target) -> str:
    created = cert.get("creationDate")
    when = created.isoformat(timespec="seconds") if isinstance(created, dt.datetime) else "?"
    cert_id = cert["certificateId"]
    log.info("unproven certificate %s left in AWS", cert_id)
    command = delete_certificate_command(cert_id, target)
    return (
        f"certificate {cert_id} ({cert.get('status', '?')}, created {when}) may be the one an "
        f"interrupted create made for {', '.join(names)}, but nothing proves it is ours: it is "
        f"left in AWS; if it is yours, delete it with: {command}"
    )


def delete_certificate_command(cert_id: str, target: Target) -> str:
    """The AWS CLI command that deactivates and deletes one certificate, for a human to run."""
    where = ["--region", target.region]
    if target.profile:
        where += ["--profile", target.profile]
    if target.endpoint_url:
        where += ["--endpoint-url", target.endpoint_url]
    options = shlex.join(["--certificate-id", cert_id, *where])
    return (
        f"aws iot update-certificate {options} --new-status INACTIVE && "
        f"aws iot delete-certificate {options}"
    )
