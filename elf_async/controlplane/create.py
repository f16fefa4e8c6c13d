"""`create`: provision things concurrently, each step recorded in the ledger around its call.

Per thing: a certificate (ACTIVE), the thing (with the fleet attribute), the certificate
attached to the thing, the fleet policy attached to the certificate. Workers pull things
from a queue, so `concurrency` bounds the calls in flight while each API keeps its own pace.

With `--identity shared` there are no things: one certificate, recorded in one ledger row
like a thing's (its thing and principal steps stay pending), with the fleet policy attached;
the devices are a count in the ledger's meta, so any COUNT costs the same three calls.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from elf_async.config import Settings
from elf_async.controlplane.aws import ControlPlane
from elf_async.controlplane.certs import (
    CertificateAuthority,
    KeyType,
    PrivateKey,
    generate_key,
    key_pem,
    load_private_key,
    make_csr,
    thing_files,
)
from elf_async.controlplane.fanout import fan_out
from elf_async.controlplane.fleet import (
    DEVICES_KEY,
    FLEET_ATTRIBUTE,
    FLEET_ID_LENGTH,
    FLEET_SIZE_KEY,
    IDENTITY_KEY,
    INDEX_WIDTH,
    PER_THING,
    SHARD_KEY,
    SHARED,
    SHARED_IDENTITY,
    THING_IDENTITY,
    WATCH_IDS_KEY,
    controller_name,
    controller_policy_document,
    controller_policy_name,
    default_prefix,
    is_controller,
    new_fleet_id,
    per_thing_topics,
    policy_document,
    policy_name,
    policy_problem,
    recorded_shard,
    shared_identity_name,
)
from elf_async.controlplane.ledger import SHARED_STEPS, Ledger, ThingRecord
from elf_async.controlplane.recovery import RecoveryResult, resolve_cert_intents
from elf_async.controlplane.session import FleetSession, open_fleet
from elf_async.errors import AccessDenied, AwsError, ErrorTally, UsageError
from elf_async.files import write_private, write_public
from elf_async.progress import ProgressSink
from elf_async.shards import Shard

CertMode = Literal["aws", "csr", "ca"]
CERT_MODES: tuple[CertMode, ...] = ("aws", "csr", "ca")
# csr: the key is made here, so an interrupted certificate creation is provably ours.
DEFAULT_CERT_MODE: CertMode = "csr"
# EC P-256 when the user does not choose: a connect costs the client ~1-2 ms less CPU than with
# RSA-2048 (benchmarks/NOTES.md), and the key is faster to make. A fleet keeps the type it has.
DEFAULT_KEY_TYPE: KeyType = "ec"


@dataclass(frozen=True, slots=True)
class Fleet:
    """What every thing of a fleet shares."""

    fleet_id: str
    prefix: str
    region: str
    account: str
    topic_root: str
    shared_topics: bool
    cert_mode: CertMode
    key_type: KeyType
    state_dir: Path
    ca: CertificateAuthority | None = None
    shared_identity: bool = False  # one certificate for every device, no things

    @property
    def policy(self) -> str:
        return policy_name(self.fleet_id)


@dataclass
class CreateSummary:
    """What `create` did, for the final report and the exit code."""

    attempted: int = 0
    created: int = 0
    resumed: bool = False
    stopped_early: str | None = None
    errors: ErrorTally = field(default_factory=ErrorTally)
    elapsed_s: float = 0.0

    @property
    def failed(self) -> int:
        return self.errors.total

    @property
    def things_per_s(self) -> float:
        return self.created / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def ensure_policy(plane: ControlPlane, ledger: Ledger, fleet: Fleet) -> None:
    """Create the fleet policy once; recorded as intended before the call."""
    document = policy_document(
        region=fleet.region,
        account=fleet.account,
        topic_root=fleet.topic_root,
        shared_topics=fleet.shared_topics,
        prefix=fleet.prefix,
        shared_identity=fleet.shared_identity,
    )
    await _ensure_policy(plane, ledger, fleet.policy, document)


async def _ensure_policy(plane: ControlPlane, ledger: Ledger, name: str, document: str) -> None:
    existing = ledger.fleet_resource("policy", name)
    if existing and existing.state == "created":
        return
    ledger.mark_fleet_resource("policy", name, "intended")
    try:
        response = await plane.call("CreatePolicy", policyName=name, policyDocument=document)
        arn = str(response["policyArn"])
    except AwsError as exc:
        if exc.code != "ResourceAlreadyExistsException":
            raise
        # The name holds our random fleet id: an existing one is ours, from an interrupted run.
        arn = str((await plane.call("GetPolicy", policyName=name))["policyArn"])
    ledger.mark_fleet_resource("policy", name, "created", arn=arn)


async def ensure_controller(
    plane: ControlPlane, ledger: Ledger, fleet: Fleet, progress: ProgressSink
) -> CreateSummary:
    """The command controller (`create --controller`): its policy, then its certificate with
    that policy attached, each step recorded around its call like a thing's (its ledger row's
    thing and principal steps stay pending: it is no registry thing)."""
    policy = controller_policy_name(fleet.fleet_id)
    document = controller_policy_document(
        region=fleet.region, account=fleet.account, topic_root=fleet.topic_root, prefix=fleet.prefix
    )
    await _ensure_policy(plane, ledger, policy, document)
    record = ledger.add_identity(controller_name(fleet.prefix))
    provisioner = Provisioner(plane, ledger, fleet, concurrency=1, progress=progress, policy=policy)
    return await provisioner.run([] if record.ready_for(SHARED_STEPS) else [record])


async def register_ca(plane: ControlPlane, ca: CertificateAuthority) -> dict[str, Any]:
    """RegisterCACertificate, active, in SNI-only mode (no verification certificate needed)."""
    return await plane.call(
        "RegisterCACertificate",
        caCertificate=ca.cert_pem,
        setAsActive=True,
        allowAutoRegistration=False,
        certificateMode="SNI_ONLY",
    )


async def ensure_ca_registered(
    plane: ControlPlane, ledger: Ledger, ca: CertificateAuthority
) -> None:
    """Register the signing CA (--register-ca); one AWS already knows is left as it is, not ours."""
    name = ca.cert.subject.rfc4514_string()
    existing = ledger.fleet_resource("ca", name)
    if existing and existing.state == "created":
        return
    ledger.mark_fleet_resource("ca", name, "intended")
    try:
        response = await register_ca(plane, ca)
    except AwsError as exc:
        if exc.code != "ResourceAlreadyExistsException":
            raise
        ledger.mark_fleet_resource("ca", name, "removed")  # someone else's: clean leaves it
        return
    ledger.mark_fleet_resource(
        "ca", name, "created", aws_id=response["certificateId"], arn=response["certificateArn"]
    )


class Provisioner:
    """Runs the four steps of each thing; every state change is committed around its call."""

    def __init__(
        self,
        plane: ControlPlane,
        ledger: Ledger,
        fleet: Fleet,
        *,
        concurrency: int,
        progress: ProgressSink,
        policy: str | None = None,
    ) -> None:
        self.plane = plane
        self.ledger = ledger
        self.fleet = fleet
        # The policy its certificates get: the fleet's, or the controller's (no thing then).
        self.policy = policy or fleet.policy
        self.with_things = not fleet.shared_identity and policy is None
        self.concurrency = concurrency
        self.progress = progress
        self.summary = CreateSummary()
        self._stop: str | None = None

    async def run(self, records: list[ThingRecord]) -> CreateSummary:
        started = time.monotonic()
        self.summary.attempted = len(records)
        try:
            await fan_out(
                records,
                self._provision,
                concurrency=self.concurrency,
                progress=self.progress,
                stopped=lambda: self._stop is not None,
            )
        finally:
            self.summary.elapsed_s = time.monotonic() - started
        self.summary.stopped_early = self._stop
        return self.summary

    async def _provision(self, record: ThingRecord) -> bool:
        name = record.name
        try:
            cert_arn = record.cert_arn
            if record.cert_state != "created" or cert_arn is None:
                cert_arn = await self._certificate(record)
            if record.thing_state != "created" and self.with_things:
                await self._step(
                    name,
                    "thing",
                    "CreateThing",
                    thingName=name,
                    attributePayload={"attributes": {FLEET_ATTRIBUTE: self.fleet.fleet_id}},
                )
            if record.principal_state != "created" and self.with_things:
                await self._step(
                    name, "principal", "AttachThingPrincipal", thingName=name, principal=cert_arn
                )
            if record.policy_state != "created":
                await self._step(
                    name, "policy", "AttachPolicy", policyName=self.policy, target=cert_arn
                )
        except AwsError as exc:
            self.ledger.record_error(name, exc.code, exc.message)
            self.summary.errors.record(name, exc)
            if isinstance(exc, AccessDenied):
                self._stop = f"stopped early: {exc} (every further thing would fail the same way)"
            return False
        except OSError as exc:  # a key or certificate file: every further thing would fail too
            raise UsageError(
                f"{exc.filename or self.fleet.state_dir}: {exc.strerror or exc}; once the state "
                "dir is writable with space to spare, run `elf-async create` again: it finishes "
                "what this one started"
            ) from exc
        if record.error_code:
            self.ledger.record_error(name, None, None)
        self.summary.created += 1
        return True

    async def _step(
        self, name: str, step: Literal["thing", "principal", "policy"], op: str, **params: Any
    ) -> None:
        self.ledger.mark(name, step, "intended")
        await self.plane.call(op, **params)
        self.ledger.mark(name, step, "created")

    async def _certificate(self, record: ThingRecord) -> str:
        """Create or register the thing's certificate; key material is on disk before the
        ledger says "created", and locally made keys are on disk before the call."""
        name = record.name
        key_path, crt_path = thing_files(self.fleet.state_dir, name)
        mode = self.fleet.cert_mode
        if mode == "aws":
            self.ledger.mark(name, "cert", "intended", cert_intent_at=time.time())
            response = await self.plane.call("CreateKeysAndCertificate", setAsActive=True)
            await asyncio.to_thread(
                _write_pair,
                key_path,
                response["keyPair"]["PrivateKey"],
                crt_path,
                response["certificatePem"],
            )
        elif mode == "csr":
            csr = await asyncio.to_thread(self._local_csr, key_path, name)
            self.ledger.mark(name, "cert", "intended", cert_intent_at=time.time())
            response = await self.plane.call(
                "CreateCertificateFromCsr", certificateSigningRequest=csr, setAsActive=True
            )
            await asyncio.to_thread(write_public, crt_path, response["certificatePem"])
        else:
            certificate = await asyncio.to_thread(self._local_signed, key_path, crt_path, name)
            assert self.fleet.ca is not None
            self.ledger.mark(name, "cert", "intended", cert_intent_at=time.time())
            response = await self._register(certificate, self.fleet.ca.cert_pem)
        cert_arn = str(response["certificateArn"])
        self.ledger.mark(
            name, "cert", "created", cert_id=str(response["certificateId"]), cert_arn=cert_arn
        )
        return cert_arn

    async def _register(self, certificate: str, ca_pem: str) -> dict[str, object]:
        try:
            return await self.plane.call(
                "RegisterCertificate",
                certificatePem=certificate,
                caCertificatePem=ca_pem,
                status="ACTIVE",
            )
        except AwsError as exc:
            # Registered by an interrupted run: AWS names the certificate in the error.
            if exc.code == "ResourceAlreadyExistsException" and "resourceId" in exc.details:
                return {
                    "certificateId": exc.details["resourceId"],
                    "certificateArn": exc.details["resourceArn"],
                }
            raise

    def _local_key(self, key_path: Path) -> PrivateKey:
        """The thing's key, made here and stored before any call that uses it."""
        if key_path.exists():
            return load_private_key(key_path)
        key = generate_key(self.fleet.key_type)
        write_private(key_path, key_pem(key))
        return key

    def _local_csr(self, key_path: Path, name: str) -> str:
        # The fleet id in the subject proves the certificate ours even where the signer
        # ignores the CSR's key (recovery.py).
        return make_csr(self._local_key(key_path), name, unit=f"elf-async {self.fleet.fleet_id}")

    def _local_signed(self, key_path: Path, crt_path: Path, name: str) -> str:
        assert self.fleet.ca is not None
        key = self._local_key(key_path)
        if crt_path.exists():
            return crt_path.read_text()
        certificate = self.fleet.ca.sign(key.public_key(), name)
        write_public(crt_path, certificate)
        return certificate


def _write_pair(key_path: Path, key_text: str, crt_path: Path, crt_text: str) -> None:
    write_private(key_path, key_text)
    write_public(crt_path, crt_text)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """What the user asked `create` for; `None` means "as the fleet already is, else default"."""

    count: int
    prefix: str | None = None
    cert_mode: CertMode | None = None
    key_type: KeyType | None = None
    topic_root: str | None = None
    shared_topics: bool = False  # else as the fleet already is, else per-thing topics
    identity: str | None = None  # thing or shared; None: as the fleet already is, else thing
    ca_cert: Path | None = None
    ca_key: Path | None = None
    register_ca: bool = False
    concurrency: int = 16
    api_rates: dict[str, float] = field(default_factory=dict)
    fleet_id: str | None = None  # None: as the fleet already is, else a new random one
    shard: Shard | None = None  # create only this shard's slice of `count` things
    controller: bool = False  # also the command controller's identity (`send --commands`)


@dataclass
class CreateResult:
    summary: CreateSummary
    fleet_id: str
    prefix: str
    region: str
    account: str
    things_in_fleet: int
    api: dict[str, dict[str, float]]
    recovery: RecoveryResult
    identity: str = THING_IDENTITY  # thing, or shared: `things_in_fleet` counts devices
    controller: str | None = None  # the command controller's client id, once it is ready


@dataclass(frozen=True, slots=True)
class FleetChoices:
    """What a fleet is made of; a fleet keeps what it was created with."""

    prefix: str | None  # None: the default, which needs the fleet id
    cert_mode: CertMode
    key_type: KeyType
    topic_root: str
    shared_topics: bool
    ca: CertificateAuthority | None
    shared_identity: bool

    @classmethod
    def of(cls, request: CreateRequest, meta: dict[str, str]) -> FleetChoices:
        """The request against the fleet's record: usage errors before any AWS call."""
        cert_mode = _fleet_choice(
            "cert-mode", request.cert_mode, meta.get("cert_mode"), DEFAULT_CERT_MODE
        )
        prefix = _fleet_choice("prefix", request.prefix, meta.get("prefix"), "") or None
        topic_root = _fleet_choice("topic-root", request.topic_root, meta.get("topic_root"), "elf")
        shared_topics = _topic_scope(request.shared_topics, meta)
        # A fleet from before --identity has things.
        had = meta.get(IDENTITY_KEY) or (THING_IDENTITY if "fleet_id" in meta else None)
        identity = _fleet_choice("identity", request.identity, had, THING_IDENTITY)
        problem = policy_problem(
            topic_root=topic_root,
            prefix=prefix or "elf-" + "x" * FLEET_ID_LENGTH,
            shared_topics=shared_topics,
            shared_identity=identity == SHARED_IDENTITY,
        )
        if problem:
            raise UsageError(problem)
        if request.controller and (request.shard or recorded_shard(meta)):
            raise UsageError(
                "a command controller (--controller, --commands) serves a whole fleet: it "
                "cannot be made for a shard (--shard)"
            )
        _check_identity(request, meta)
        return cls(
            prefix=prefix,
            cert_mode=cast(CertMode, cert_mode),
            key_type=cast(
                KeyType,
                _fleet_choice("key-type", request.key_type, meta.get("key_type"), DEFAULT_KEY_TYPE),
            ),
            topic_root=topic_root,
            shared_topics=shared_topics,
            ca=_signing_ca(cert_mode, request, meta),
            shared_identity=identity == SHARED_IDENTITY,
        )


def _check_identity(request: CreateRequest, meta: dict[str, str]) -> None:
    """A state dir keeps its fleet id and its shard: another is a usage error, before AWS."""
    stored_id = meta.get("fleet_id")
    if request.fleet_id and stored_id and request.fleet_id != stored_id:
        raise UsageError(
            f"this state dir holds fleet {stored_id}, not --fleet-id {request.fleet_id}: "
            "use another --state-dir"
        )
    if not stored_id:
        return
    recorded = recorded_shard(meta)
    asked = (request.shard, request.count) if request.shard else None
    if asked != recorded:
        stored = f"shard {recorded[0]} of a {recorded[1]}-thing fleet" if recorded else "unsharded"
        wanted = f"shard {asked[0]} of {asked[1]} things" if asked else "an unsharded create"
        raise UsageError(
            f"this state dir holds fleet {stored_id} ({stored}); it cannot take {wanted}: "
            "use another --state-dir for each shard"
        )


def _fleet_choice(name: str, asked: str | None, stored: str | None, default: str) -> str:
    if asked and stored and asked != stored:
        raise UsageError(
            f"this fleet was created with --{name} {stored}; it cannot change to {asked}"
        )
    return asked or stored or default


async def create_fleet(
    settings: Settings, request: CreateRequest, progress: ProgressSink
) -> CreateResult:
    """Create `request.count` things, or finish the unfinished ones of an interrupted run."""
    async with open_fleet(
        settings,
        create=True,
        concurrency=request.concurrency,
        api_rates=request.api_rates,
        check=lambda meta: FleetChoices.of(request, meta),
    ) as session:
        return await create_with(session, request, progress)


async def create_with(
    session: FleetSession, request: CreateRequest, progress: ProgressSink
) -> CreateResult:
    """`create_fleet` on an open fleet (its control plane may be an in-memory one); with
    `request.controller`, or to finish one an interrupted create left, the controller too."""
    result = await _create_devices(session, request, progress)
    ledger = session.ledger
    name = controller_name(result.prefix)
    wanted = request.controller or _known(ledger, name)
    if wanted and not result.summary.stopped_early:
        fleet_id = result.fleet_id
        meta = ledger.meta()
        fleet = Fleet(
            fleet_id=fleet_id,
            prefix=result.prefix,
            region=result.region,
            account=result.account,
            topic_root=meta["topic_root"],
            shared_topics=not per_thing_topics(meta),
            cert_mode=cast(CertMode, meta["cert_mode"]),
            key_type=cast(KeyType, meta["key_type"]),
            state_dir=session.state_dir,
            ca=_signing_ca(meta["cert_mode"], request, meta),
        )
        made = await ensure_controller(session.plane, ledger, fleet, progress)
        errors = result.summary.errors
        errors.counts.update(made.errors.counts)
        for code, first in made.errors.first.items():
            errors.first.setdefault(code, first)
        result.summary.stopped_early = made.stopped_early
        result.api = session.plane.api_report()
    if _known(ledger, name) and ledger.thing(name).ready_for(SHARED_STEPS):
        result.controller = name
    return result


def _known(ledger: Ledger, name: str) -> bool:
    try:
        ledger.thing(name)
    except KeyError:
        return False
    return True


async def _create_devices(
    session: FleetSession, request: CreateRequest, progress: ProgressSink
) -> CreateResult:
    ledger, target, plane = session.ledger, session.target, session.plane
    meta = ledger.meta()
    choices = FleetChoices.of(request, meta)
    fleet_id = meta.get("fleet_id") or request.fleet_id or new_fleet_id()
    shard = request.shard
    prefix = choices.prefix or default_prefix(fleet_id)
    ca = choices.ca
    ledger.set_meta(
        fleet_id=fleet_id,
        prefix=prefix,
        region=target.region,
        account=session.account,
        endpoint_url=target.endpoint_url,
        profile=target.profile,
        cert_mode=choices.cert_mode,
        key_type=choices.key_type,
        topic_root=choices.topic_root,
        topic_scope=SHARED if choices.shared_topics else PER_THING,
        # A new fleet's policy allows watcher ids; an older fleet's keeps what it had.
        watch_ids=meta.get(WATCH_IDS_KEY) if meta.get("fleet_id") else "yes",
        ca_cert=str((request.ca_cert or Path(meta.get("ca_cert", ""))).resolve()) if ca else None,
        ca_key=str((request.ca_key or Path(meta.get("ca_key", ""))).resolve()) if ca else None,
        identity=SHARED_IDENTITY if choices.shared_identity else THING_IDENTITY,
        **({SHARD_KEY: str(shard), FLEET_SIZE_KEY: str(request.count)} if shard else {}),
    )
    fleet = Fleet(
        fleet_id=fleet_id,
        prefix=prefix,
        region=target.region,
        account=session.account,
        topic_root=choices.topic_root,
        shared_topics=choices.shared_topics,
        cert_mode=choices.cert_mode,
        key_type=choices.key_type,
        state_dir=session.state_dir,
        ca=ca,
        shared_identity=choices.shared_identity,
    )
    await ensure_policy(plane, ledger, fleet)
    if request.register_ca and ca is not None:
        await ensure_ca_registered(plane, ledger, ca)
    unfinished = [r.name for r in ledger.things() if not r.ready and not is_controller(r.name)]
    recovery = await resolve_cert_intents(
        session, cert_mode=choices.cert_mode, ca_pem=ca.cert_pem if ca else None
    )
    if fleet.shared_identity:
        return await _create_shared(session, request, fleet, progress, recovery)
    if unfinished:
        records = [ledger.thing(name) for name in unfinished]
    elif shard is None:
        records = ledger.add_things(request.count, prefix, INDEX_WIDTH)
    elif not ledger.things():  # a shard's slice is fixed: made once, then only finished
        slice_ = shard.indexes(request.count)
        records = ledger.add_things(len(slice_), prefix, INDEX_WIDTH, first=slice_.start)
    else:
        records = []
    provisioner = Provisioner(
        plane, ledger, fleet, concurrency=request.concurrency, progress=progress
    )
    summary = await provisioner.run(records)
    summary.resumed = bool(unfinished)
    return CreateResult(
        summary=summary,
        fleet_id=fleet_id,
        prefix=prefix,
        region=target.region,
        account=session.account,
        things_in_fleet=len(ledger.things()),
        api=plane.api_report(),
        recovery=recovery,
    )


async def _create_shared(
    session: FleetSession,
    request: CreateRequest,
    fleet: Fleet,
    progress: ProgressSink,
    recovery: RecoveryResult,
) -> CreateResult:
    """The shared certificate (made, or finished after an interruption), then `request.count`
    more virtual devices: a number in the meta, however many."""
    ledger = session.ledger
    record = ledger.add_identity(shared_identity_name(fleet.prefix))
    devices = int(ledger.meta().get(DEVICES_KEY, "0"))
    resumed = devices > 0 and not record.ready_for(SHARED_STEPS)  # an interrupted create
    if not resumed:
        devices += request.count
        ledger.set_meta(**{DEVICES_KEY: str(devices)})
    provisioner = Provisioner(session.plane, ledger, fleet, concurrency=1, progress=progress)
    summary = await provisioner.run([] if record.ready_for(SHARED_STEPS) else [record])
    summary.resumed = resumed
    summary.attempted = devices if resumed else request.count
    ready = ledger.thing(record.name).ready_for(SHARED_STEPS)
    summary.created = summary.attempted if ready else 0
    return CreateResult(
        summary=summary,
        fleet_id=fleet.fleet_id,
        prefix=fleet.prefix,
        region=fleet.region,
        account=fleet.account,
        things_in_fleet=devices,
        api=session.plane.api_report(),
        recovery=recovery,
        identity=SHARED_IDENTITY,
    )


def _topic_scope(shared_topics: bool, meta: dict[str, str]) -> bool:
    """Whether the policy shares the topic root: a fleet keeps the scope its policy has."""
    if "fleet_id" not in meta:
        return shared_topics
    shared = not per_thing_topics(meta)
    if shared_topics and not shared:
        raise UsageError(
            "this fleet's policy scopes topics per thing; --shared-topics cannot change it "
            "(create a new fleet in another --state-dir)"
        )
    return shared


def _signing_ca(
    cert_mode: str, request: CreateRequest, meta: dict[str, str]
) -> CertificateAuthority | None:
    if cert_mode != "ca":
        return None
    cert = request.ca_cert or (Path(meta["ca_cert"]) if "ca_cert" in meta else None)
    key = request.ca_key or (Path(meta["ca_key"]) if "ca_key" in meta else None)
    if cert is None or key is None:
        raise UsageError(
            "--cert-mode ca needs --ca-cert and --ca-key (the CA that signs the things)"
        )
    return CertificateAuthority.load(cert, key)
