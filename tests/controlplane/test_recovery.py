"""Recovery after an interrupted create, on the in-memory control plane: in every cert mode,
what is provably ours is adopted (and so cleaned), and what is not is listed, never deleted."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from support.fake_plane import FakeIot, FakePlane, Killed, fake_session

from elf_async.controlplane.certs import CertificateAuthority, key_pem, make_csr, thing_files
from elf_async.controlplane.clean import clean_with
from elf_async.controlplane.create import CreateRequest, CreateResult, create_with
from elf_async.controlplane.ledger import Ledger
from elf_async.files import write_private, write_public
from elf_async.progress import NoProgress

COUNT = 6


async def create(state: Path, iot: FakeIot, count: int = COUNT, **options: Any) -> CreateResult:
    """One `create` process on `state` against `iot` (a fresh ledger handle, as a new run has)."""
    plane = FakePlane(iot, lose_response=options.pop("lose_response", {}))
    with Ledger.open(state, create=True) as ledger:
        request = CreateRequest(count=count, concurrency=3, key_type="ec", **options)
        return await create_with(fake_session(state, plane, ledger), request, NoProgress())


async def killed_create(state: Path, iot: FakeIot, operation: str, **options: Any) -> None:
    """A create whose process dies right after AWS answered the 2nd `operation` call."""
    with pytest.raises(Killed):
        await create(state, iot, lose_response={operation: 2}, **options)


async def clean(state: Path, iot: FakeIot) -> Any:
    with Ledger.open(state) as ledger:
        session = fake_session(state, FakePlane(iot), ledger)
        return await clean_with(session, fleet_id=None, concurrency=3, progress=NoProgress())


def assert_all_ready(state: Path, result: CreateResult) -> None:
    assert result.summary.created == result.summary.attempted
    assert result.things_in_fleet == COUNT
    with Ledger.open(state) as ledger:
        assert ledger.count_by_status() == {"ready": COUNT}


def assert_one_certificate_per_thing(iot: FakeIot) -> None:
    """Every certificate is attached to exactly one thing, and every thing holds one."""
    assert all(len(held) == 1 for held in iot.principals.values())
    assert sorted(p.rsplit("/", 1)[1] for held in iot.principals.values() for p in held) == sorted(
        iot.certificate_ids()
    )


@pytest.fixture
def ca_options(tmp_path: Path) -> dict[str, Any]:
    ca = CertificateAuthority.create("test-ca")
    write_public(tmp_path / "ca.crt", ca.cert_pem)
    write_private(tmp_path / "ca.key", key_pem(ca.key))
    return {"cert_mode": "ca", "ca_cert": tmp_path / "ca.crt", "ca_key": tmp_path / "ca.key"}


@pytest.mark.parametrize(
    ("operation", "mode"),
    [("CreateCertificateFromCsr", "csr"), ("RegisterCertificate", "ca")],
)
async def test_a_lost_certificate_is_proven_ours_and_adopted(
    tmp_path: Path, operation: str, mode: str, ca_options: dict[str, Any]
) -> None:
    """csr: the certificate carries our key; ca: registering it again names it."""
    state, iot = tmp_path / "state", FakeIot()
    options = ca_options if mode == "ca" else {"cert_mode": mode}
    await killed_create(state, iot, operation, **options)
    result = await create(state, iot, **options)
    assert result.summary.resumed
    assert_all_ready(state, result)
    assert result.recovery.adopted >= 1  # the lost one at least (others may not have run)
    assert result.recovery.unresolved == []
    assert len(iot.certificate_ids()) == COUNT  # none made twice, none orphaned
    assert_one_certificate_per_thing(iot)
    assert (await clean(state, iot)).summary.forgotten
    assert iot.is_empty()


async def test_aws_mode_lists_a_lost_certificate_and_deletes_nothing(tmp_path: Path) -> None:
    """aws: AWS made the key, the response is gone: nothing proves the certificate ours."""
    state, iot = tmp_path / "state", FakeIot()
    await killed_create(state, iot, "CreateKeysAndCertificate", cert_mode="aws")
    result = await create(state, iot, cert_mode="aws")
    assert_all_ready(state, result)
    attached = {p.rsplit("/", 1)[1] for held in iot.principals.values() for p in held}
    orphans = iot.certificate_ids() - attached
    assert orphans  # the lost response's certificate, at least
    assert len(result.recovery.unresolved) == len(orphans)
    listed = " ".join(result.recovery.unresolved)
    for cert_id in orphans:
        assert (
            f"aws iot update-certificate --certificate-id {cert_id} --region us-west-2 "
            f"--new-status INACTIVE && aws iot delete-certificate --certificate-id {cert_id} "
            "--region us-west-2" in listed
        )
    assert orphans <= iot.certificate_ids()  # listed, not deleted
    assert all(iot.certificates[c].status == "ACTIVE" for c in orphans)
    assert (await clean(state, iot)).summary.forgotten  # the intent was settled by create
    assert iot.certificate_ids() == orphans  # clean left them too
    assert not iot.things
    assert not iot.policies


async def fleet_with_an_intent(state: Path, iot: FakeIot, **options: Any) -> str:
    """A fleet of one thing, then the ledger state a kill leaves for a second thing: its
    certificate call may have run, the ledger never learned. Returns its name."""
    result = await create(state, iot, 1, **options)
    with Ledger.open(state) as ledger:
        [record] = ledger.add_things(1, result.prefix, 5)
        ledger.mark(record.name, "cert", "intended", cert_intent_at=time.time())
    return record.name


async def test_aws_mode_adopts_a_certificate_whose_file_was_written(tmp_path: Path) -> None:
    """The response's files are written before the ledger commit: they match it exactly."""
    state, iot = tmp_path / "state", FakeIot()
    name = await fleet_with_an_intent(state, iot, cert_mode="aws")
    response = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_keys_and_certificate(setAsActive=True)  # someone else's, at the same moment
    key_file, crt_file = thing_files(state, name)
    write_private(key_file, response["keyPair"]["PrivateKey"])
    write_public(crt_file, response["certificatePem"])
    result = await clean(state, iot)
    assert response["certificateId"] not in iot.certificate_ids()
    assert len(iot.certificate_ids()) == 1  # the other one stays
    assert [line for line in result.summary.warnings if "nothing proves" in line] == []
    assert result.summary.forgotten


async def test_aws_mode_lists_only_what_could_be_ours(tmp_path: Path) -> None:
    """Candidates are recent, ACTIVE and attached to nothing; none of them is deleted."""
    state, iot = tmp_path / "state", FakeIot()
    name = await fleet_with_an_intent(state, iot, cert_mode="aws")
    candidate = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    inactive = iot.create_keys_and_certificate(setAsActive=False)["certificateId"]
    held = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_thing("someone-elses")
    iot.attach_thing_principal("someone-elses", held["certificateArn"])
    old = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    iot.certificates[old].created -= dt.timedelta(hours=2)
    result = await clean(state, iot)
    [line] = [w for w in result.summary.warnings if "nothing proves it is ours" in w]
    assert f"certificate {candidate} " in line
    assert name in line
    # the fleet's own certificate is gone; nothing else was touched
    assert iot.certificate_ids() == {candidate, inactive, held["certificateId"], old}
    assert not result.summary.forgotten  # the ledger stays while something is unresolved


async def test_csr_on_a_stand_in_that_ignores_the_key(tmp_path: Path) -> None:
    """moto signs a key of its own but copies the CSR's subject: our thing's name with the
    fleet id there proves the certificate ours, even with a prefix that lacks the fleet id."""
    state, iot = tmp_path / "state", FakeIot(ignore_csr_key=True)
    await killed_create(state, iot, "CreateCertificateFromCsr", cert_mode="csr", prefix="dev")
    result = await create(state, iot, cert_mode="csr", prefix="dev")
    assert_all_ready(state, result)
    assert result.recovery.adopted >= 1
    assert result.recovery.unresolved == []
    assert len(iot.certificate_ids()) == COUNT
    assert_one_certificate_per_thing(iot)


async def test_csr_our_public_key_alone_proves_it(tmp_path: Path) -> None:
    """What AWS does: the certificate carries the CSR's key (here a CSR whose subject names
    neither our fleet nor our thing, so only the key can prove it)."""
    state, iot = tmp_path / "state", FakeIot()
    name = await fleet_with_an_intent(state, iot, cert_mode="csr", prefix="dev")
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(thing_files(state, name)[0], key_pem(key))
    ours = iot.create_certificate_from_csr(make_csr(key, "anything"), setAsActive=True)
    result = await clean(state, iot)
    assert ours["certificateId"] not in iot.certificate_ids()
    assert result.summary.warnings == []
    assert iot.is_empty()


async def test_csr_a_certificate_with_only_our_thing_name_is_listed(tmp_path: Path) -> None:
    """A certificate whose CN is our thing's name but whose key and subject are not ours."""
    state, iot = tmp_path / "state", FakeIot()
    name = await fleet_with_an_intent(state, iot, cert_mode="csr", prefix="dev")
    write_private(thing_files(state, name)[0], key_pem(ec.generate_private_key(ec.SECP256R1())))
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), name)
    impostor = iot.create_certificate_from_csr(csr, setAsActive=True)["certificateId"]
    unrelated = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    result = await clean(state, iot)
    [line] = [w for w in result.summary.warnings if "nothing proves it is ours" in w]
    assert f"certificate {impostor} " in line
    assert unrelated not in " ".join(result.summary.warnings)  # csr: a stranger is no suspect
    assert iot.certificate_ids() == {impostor, unrelated}


async def test_an_intent_whose_call_never_ran_is_settled_quietly(tmp_path: Path) -> None:
    state, iot = tmp_path / "state", FakeIot()
    name = await fleet_with_an_intent(state, iot)
    write_private(thing_files(state, name)[0], key_pem(ec.generate_private_key(ec.SECP256R1())))
    result = await create(state, iot)
    assert result.summary.resumed
    assert result.recovery.adopted == 0
    assert result.recovery.unresolved == []
    assert len(iot.certificate_ids()) == 2
    assert_one_certificate_per_thing(iot)


@pytest.mark.parametrize(
    ("operation", "mode"),
    [
        ("CreateCertificateFromCsr", "csr"),
        ("RegisterCertificate", "ca"),
        ("CreatePolicy", "csr"),
        ("AttachPolicy", "ca"),
    ],
)
async def test_a_shared_identity_killed_mid_create_is_finished_and_cleaned(
    tmp_path: Path, operation: str, mode: str, ca_options: dict[str, Any]
) -> None:
    """`--identity shared`: a kill right after any of its calls answered leaves one
    certificate at most, which the next create adopts and finishes, and clean removes."""
    state, iot = tmp_path / "state", FakeIot()
    options = (ca_options if mode == "ca" else {"cert_mode": mode}) | {"identity": "shared"}
    with pytest.raises(Killed):
        await create(state, iot, count=1000, lose_response={operation: 1}, **options)
    result = await create(state, iot, count=1000, **options)
    assert (result.summary.created, result.things_in_fleet) == (1000, 1000)
    assert result.recovery.unresolved == []
    assert len(iot.certificate_ids()) == 1  # none made twice, none orphaned
    assert iot.things == {}
    assert (await clean(state, iot)).summary.forgotten
    assert iot.is_empty()
