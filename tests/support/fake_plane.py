"""An in-memory AWS IoT control plane for fast tests of create, clean and recovery.

`FakeIot` keeps things, certificates, policies and attachments, and enforces the rules of
AWS's API that our engines must respect (aws-iot-facts.md):

- DeleteCertificate fails while the certificate is ACTIVE (CertificateStateException) or
  attached to a thing or a policy (DeleteConflictException).
- DetachThingPrincipal propagates late: the next `detach_lag` DeleteThing/DeleteCertificate
  calls that touch the pair still see it attached.
- DeletePolicy fails while a certificate holds the policy; DeleteThing fails while a
  principal is attached; DeleteThing of a missing thing succeeds (as AWS's does).
- Missing resources answer ResourceNotFoundException; RegisterCertificate of a known
  certificate answers ResourceAlreadyExistsException naming it.
- Certificate ids are the SHA-256 of the DER, as AWS's are; CreateCertificateFromCsr signs
  the CSR's key and subject (or, with `ignore_csr_key`, a new key as moto does).
- List calls page (`page_size`) with nextToken / nextMarker.

`FakePlane` stands in for `IotControlPlane`: it retries the `retry_codes` a caller names, as
the real transport does, counts calls, and can lose a response ("kill" the caller just after
AWS did the work) to leave exactly the state an interrupted create leaves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from elf_async.config import Target
from elf_async.controlplane.certs import CertificateAuthority, key_pem
from elf_async.controlplane.ledger import Ledger
from elf_async.controlplane.session import FleetSession
from elf_async.errors import AccessDenied, AwsError

REGION = "us-west-2"
ACCOUNT = "123456789012"
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"
DENIED = "AccessDeniedException"


class Killed(Exception):
    """The caller died after AWS did the work: the response is lost."""


@dataclass
class Certificate:
    cert_id: str
    pem: str
    status: str
    created: dt.datetime
    ca: bool = False

    @property
    def arn(self) -> str:
        return f"{ARN}:cert/{self.cert_id}"


@dataclass
class FakeIot:
    """The AWS side: resources and the rules that guard them."""

    page_size: int = 2
    detach_lag: int = 1
    ignore_csr_key: bool = False
    things: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> attributes
    certificates: dict[str, Certificate] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)  # name -> document
    principals: dict[str, list[str]] = field(default_factory=dict)  # thing -> principal arns
    attached: dict[str, list[str]] = field(default_factory=dict)  # policy -> target arns
    lagging: Counter[tuple[str, str]] = field(default_factory=Counter)  # (thing, arn) detaching
    signer: CertificateAuthority = field(
        default_factory=lambda: CertificateAuthority.create("Fake AWS IoT", key_type="ec")
    )
    clock: Iterator[int] = field(default_factory=itertools.count)

    # --- certificates ----------------------------------------------------------------
    def _add_certificate(self, pem: str, status: str, *, ca: bool = False) -> Certificate:
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        cert_id = hashlib.sha256(der).hexdigest()
        if cert_id in self.certificates:
            existing = self.certificates[cert_id]
            raise AwsError(
                "RegisterCertificate",
                "ResourceAlreadyExistsException",
                "The certificate is already provisioned or registered",
                details={"resourceId": cert_id, "resourceArn": existing.arn},
            )
        # A distinct, increasing creation time per certificate, all "now".
        created = dt.datetime.now(dt.UTC) + dt.timedelta(microseconds=next(self.clock))
        cert = Certificate(cert_id, pem, status, created, ca)
        self.certificates[cert_id] = cert
        return cert

    def _certificate(self, op: str, cert_id: str) -> Certificate:
        cert = self.certificates.get(cert_id)
        if cert is None or cert.ca:
            raise _not_found(op, f"certificate {cert_id}")
        return cert

    def _by_arn(self, op: str, arn: str) -> Certificate:
        return self._certificate(op, arn.rsplit("/", 1)[-1])

    def _signed(self, public_key: Any, subject: x509.Name) -> str:
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.signer.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self.signer.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def create_keys_and_certificate(self, setAsActive: bool = False) -> dict[str, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AWS IoT Certificate")])
        cert = self._add_certificate(
            self._signed(key.public_key(), subject), "ACTIVE" if setAsActive else "INACTIVE"
        )
        return {
            **self._ids(cert),
            "certificatePem": cert.pem,
            "keyPair": {"PrivateKey": key_pem(key), "PublicKey": "…"},
        }

    def create_certificate_from_csr(
        self, certificateSigningRequest: str, setAsActive: bool = False
    ) -> dict[str, Any]:
        csr = x509.load_pem_x509_csr(certificateSigningRequest.encode())
        public_key = csr.public_key()
        if self.ignore_csr_key:
            public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        cert = self._add_certificate(
            self._signed(public_key, csr.subject), "ACTIVE" if setAsActive else "INACTIVE"
        )
        return {**self._ids(cert), "certificatePem": cert.pem}

    def register_certificate(
        self, certificatePem: str, caCertificatePem: str | None = None, status: str = "INACTIVE"
    ) -> dict[str, Any]:
        return self._ids(self._add_certificate(certificatePem, status))

    def register_ca_certificate(self, caCertificate: str, **_: Any) -> dict[str, Any]:
        return self._ids(self._add_certificate(caCertificate, "ACTIVE", ca=True))

    def update_ca_certificate(self, certificateId: str, newStatus: str) -> dict[str, Any]:
        if certificateId not in self.certificates:
            raise _not_found("UpdateCACertificate", certificateId)
        self.certificates[certificateId].status = newStatus
        return {}

    def delete_ca_certificate(self, certificateId: str) -> dict[str, Any]:
        if certificateId not in self.certificates:
            raise _not_found("DeleteCACertificate", certificateId)
        del self.certificates[certificateId]
        return {}

    def _ids(self, cert: Certificate) -> dict[str, Any]:
        return {"certificateId": cert.cert_id, "certificateArn": cert.arn}

    def describe_certificate(self, certificateId: str) -> dict[str, Any]:
        cert = self._certificate("DescribeCertificate", certificateId)
        return {
            "certificateDescription": {
                **self._ids(cert),
                "status": cert.status,
                "certificatePem": cert.pem,
                "creationDate": cert.created,
            }
        }

    def list_certificates(
        self, pageSize: int = 25, marker: str | None = None, ascendingOrder: bool = True
    ) -> dict[str, Any]:
        certs = sorted(
            (c for c in self.certificates.values() if not c.ca),
            key=lambda c: c.created,
            reverse=not ascendingOrder,
        )
        items = [{**self._ids(c), "status": c.status, "creationDate": c.created} for c in certs]
        page, nxt = self._page(items, marker, min(pageSize, self.page_size))
        return {"certificates": page, **({"nextMarker": nxt} if nxt else {})}

    def update_certificate(self, certificateId: str, newStatus: str) -> dict[str, Any]:
        self._certificate("UpdateCertificate", certificateId).status = newStatus
        return {}

    def delete_certificate(self, certificateId: str) -> dict[str, Any]:
        op = "DeleteCertificate"
        cert = self._certificate(op, certificateId)
        if cert.status == "ACTIVE":
            raise AwsError(op, "CertificateStateException", "the certificate is ACTIVE")
        if self._things_of(cert.arn, op) or self._policies_of(cert.arn):
            raise AwsError(op, "DeleteConflictException", "the certificate is attached")
        del self.certificates[certificateId]
        return {}

    # --- things and principals -------------------------------------------------------
    def create_thing(
        self, thingName: str, attributePayload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        attributes = dict((attributePayload or {}).get("attributes", {}))
        if thingName in self.things and self.things[thingName] != attributes:
            raise AwsError("CreateThing", "ResourceAlreadyExistsException", thingName)
        self.things[thingName] = attributes
        self.principals.setdefault(thingName, [])
        return {"thingName": thingName, "thingArn": f"{ARN}:thing/{thingName}"}

    def delete_thing(self, thingName: str) -> dict[str, Any]:
        if thingName not in self.things:
            return {}
        held = self.principals[thingName] + [p for t, p in self._lagging("DeleteThing", thingName)]
        if held:
            raise AwsError("DeleteThing", "InvalidRequestException", "principals attached")
        del self.things[thingName]
        del self.principals[thingName]
        return {}

    def _thing(self, op: str, name: str) -> list[str]:
        if name not in self.things:
            raise _not_found(op, f"thing {name}")
        return self.principals[name]

    def attach_thing_principal(self, thingName: str, principal: str) -> dict[str, Any]:
        held = self._thing("AttachThingPrincipal", thingName)
        self._by_arn("AttachThingPrincipal", principal)
        if principal not in held:
            held.append(principal)
        return {}

    def detach_thing_principal(self, thingName: str, principal: str) -> dict[str, Any]:
        held = self._thing("DetachThingPrincipal", thingName)
        if principal in held:
            held.remove(principal)
            self.lagging[(thingName, principal)] = self.detach_lag
        return {}

    def _lagging(self, op: str, thing: str | None = None, arn: str | None = None) -> list[Any]:
        """Detachments not yet propagated that this call sees; each sighting brings the
        propagation one step closer."""
        seen = [
            pair
            for pair, left in self.lagging.items()
            if left > 0 and (thing is None or pair[0] == thing) and (arn is None or pair[1] == arn)
        ]
        for pair in seen:
            self.lagging[pair] -= 1
        return seen

    def _things_of(self, arn: str, op: str | None = None) -> list[str]:
        held = [t for t, principals in self.principals.items() if arn in principals]
        return held + ([t for t, _ in self._lagging(op, arn=arn)] if op else [])

    def list_things(
        self,
        attributeName: str | None = None,
        attributeValue: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        items = [
            {"thingName": name, "attributes": attributes}
            for name, attributes in sorted(self.things.items())
            if attributeName is None or attributes.get(attributeName) == attributeValue
        ]
        page, nxt = self._page(items, nextToken, min(maxResults or 100, self.page_size))
        return {"things": page, **({"nextToken": nxt} if nxt else {})}

    def list_thing_principals(self, thingName: str, nextToken: str | None = None) -> dict[str, Any]:
        held = self._thing("ListThingPrincipals", thingName)
        page, nxt = self._page(list(held), nextToken, self.page_size)
        return {"principals": page, **({"nextToken": nxt} if nxt else {})}

    def list_principal_things(self, principal: str, nextToken: str | None = None) -> dict[str, Any]:
        self._by_arn("ListPrincipalThings", principal)
        page, nxt = self._page(self._things_of(principal), nextToken, self.page_size)
        return {"things": page, **({"nextToken": nxt} if nxt else {})}

    # --- policies --------------------------------------------------------------------
    def create_policy(self, policyName: str, policyDocument: str) -> dict[str, Any]:
        if policyName in self.policies:
            raise AwsError("CreatePolicy", "ResourceAlreadyExistsException", policyName)
        self.policies[policyName] = policyDocument
        self.attached[policyName] = []
        return {"policyName": policyName, "policyArn": f"{ARN}:policy/{policyName}"}

    def get_policy(self, policyName: str) -> dict[str, Any]:
        if policyName not in self.policies:
            raise _not_found("GetPolicy", f"policy {policyName}")
        return {"policyName": policyName, "policyArn": f"{ARN}:policy/{policyName}"}

    def delete_policy(self, policyName: str) -> dict[str, Any]:
        if policyName not in self.policies:
            raise _not_found("DeletePolicy", f"policy {policyName}")
        if self.attached[policyName]:
            raise AwsError("DeletePolicy", "DeleteConflictException", "the policy is attached")
        del self.policies[policyName]
        del self.attached[policyName]
        return {}

    def attach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self.get_policy(policyName)
        self._by_arn("AttachPolicy", target)
        if target not in self.attached[policyName]:
            self.attached[policyName].append(target)
        return {}

    def detach_policy(self, policyName: str, target: str) -> dict[str, Any]:
        self.get_policy(policyName)
        self._by_arn("DetachPolicy", target)
        if target in self.attached[policyName]:
            self.attached[policyName].remove(target)
        return {}

    def _policies_of(self, arn: str) -> list[str]:
        return [name for name, targets in self.attached.items() if arn in targets]

    def list_attached_policies(self, target: str, marker: str | None = None) -> dict[str, Any]:
        self._by_arn("ListAttachedPolicies", target)
        items = [
            {"policyName": name, "policyArn": f"{ARN}:policy/{name}"}
            for name in self._policies_of(target)
        ]
        page, nxt = self._page(items, marker, self.page_size)
        return {"policies": page, **({"nextMarker": nxt} if nxt else {})}

    def list_targets_for_policy(self, policyName: str, marker: str | None = None) -> dict[str, Any]:
        if policyName not in self.attached:
            raise AwsError("ListTargetsForPolicy", "ResourceNotFoundException", "no such policy")
        page, nxt = self._page(list(self.attached[policyName]), marker, self.page_size)
        return {"targets": page, **({"nextMarker": nxt} if nxt else {})}

    @staticmethod
    def _page(items: list[Any], token: str | None, size: int) -> tuple[list[Any], str | None]:
        start = int(token or 0)
        end = start + size
        return items[start:end], (str(end) if end < len(items) else None)

    # --- views for assertions ----------------------------------------------------------
    def certificate_ids(self) -> set[str]:
        return {c.cert_id for c in self.certificates.values() if not c.ca}

    def is_empty(self) -> bool:
        return not (self.things or self.certificate_ids() or self.policies)


def _not_found(op: str, what: str) -> AwsError:
    return AwsError(op, "ResourceNotFoundException", f"{what} does not exist")


@dataclass
class FakePlane:
    """`ControlPlane` over a `FakeIot`: retries what the caller asks, counts calls, and can
    fail an API (`fail`) or lose its response after the work is done (`lose_response`)."""

    iot: FakeIot = field(default_factory=FakeIot)
    calls: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    fail: dict[str, str] = field(default_factory=dict)  # operation -> error code
    lose_response: dict[str, int] = field(default_factory=dict)  # operation -> nth call (1-based)

    async def call(
        self, operation: str, *, retry_codes: frozenset[str] = frozenset(), **params: Any
    ) -> dict[str, Any]:
        method = getattr(self.iot, _snake(operation))
        for attempt in itertools.count():
            await asyncio.sleep(0)  # let other workers interleave, as real calls do
            self.calls[operation] += 1
            if operation in self.fail:
                code = self.fail[operation]
                if code == DENIED:
                    raise AccessDenied(operation, code, "denied by the test")
                raise AwsError(operation, code, "injected by the test")
            try:
                response: dict[str, Any] = method(**params)
            except AwsError as exc:
                if exc.code in retry_codes and attempt < 9:
                    self.retried[operation] += 1
                    continue
                raise
            if self.lose_response.get(operation) == self.calls[operation]:
                raise Killed(f"killed after {operation} #{self.calls[operation]}")
            return response
        raise AssertionError("unreachable")

    def api_report(self) -> dict[str, dict[str, float]]:
        return {
            op: {"calls": n, "retried": self.retried[op]} for op, n in sorted(self.calls.items())
        }


def _snake(operation: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
    return out.replace("c_a_", "ca_")


def fake_session(state_dir: Path, plane: FakePlane, ledger: Ledger | None = None) -> FleetSession:
    """A fleet session on `state_dir` whose AWS is `plane`."""
    return FleetSession(
        ledger=ledger or Ledger.open(state_dir, create=True),
        state_dir=state_dir,
        target=Target(region=REGION, profile=None, endpoint_url=None),
        account=ACCOUNT,
        plane=plane,
    )
