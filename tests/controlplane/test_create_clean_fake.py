"""create and clean on the in-memory control plane, which enforces AWS's ordering rules:
fast checks of the engines, the fan-out and discovery (the moto tests check the real wire)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.fake_plane import DENIED, FakeIot, FakePlane, fake_session

from elf_async.controlplane.clean import CleanResult, clean_with, forget
from elf_async.controlplane.create import CreateRequest, CreateResult, create_with
from elf_async.controlplane.fanout import fan_out
from elf_async.controlplane.fleet import controller_name, controller_policy_name, policy_name
from elf_async.controlplane.ledger import Ledger
from elf_async.controlplane.status import fleet_status
from elf_async.errors import AwsError
from elf_async.progress import NoProgress


async def create(
    state: Path, plane: FakePlane, count: int, **options: Any
) -> tuple[CreateResult, Ledger]:
    ledger = Ledger.open(state, create=True)
    request = CreateRequest(count=count, concurrency=4, key_type="ec", **options)
    return await create_with(fake_session(state, plane, ledger), request, NoProgress()), ledger


async def clean(
    state: Path, plane: FakePlane, ledger: Ledger, fleet_id: str | None = None
) -> CleanResult:
    session = fake_session(state, plane, ledger)
    return await clean_with(session, fleet_id=fleet_id, concurrency=4, progress=NoProgress())


@pytest.mark.parametrize("cert_mode", ["csr", "aws"])
async def test_create_then_clean_leaves_nothing(tmp_path: Path, cert_mode: str) -> None:
    plane = FakePlane()
    created, ledger = await create(tmp_path, plane, 7, cert_mode=cert_mode)
    assert created.summary.created == 7
    assert len(plane.iot.things) == 7
    assert_one_certificate_per_thing(plane.iot)
    policy = policy_name(created.fleet_id)
    assert len(plane.iot.attached[policy]) == 7
    assert created.api["CreateThing"]["calls"] == 7  # the plane's own report

    cleaned = await clean(tmp_path, plane, ledger)
    assert cleaned.summary.removed == 7
    assert cleaned.summary.failed == 0
    assert cleaned.summary.forgotten
    assert plane.iot.is_empty()
    assert plane.retried["DeleteThing"] > 0  # the detach propagated late, and was waited out


def assert_one_certificate_per_thing(iot: FakeIot) -> None:
    held = [p.rsplit("/", 1)[1] for principals in iot.principals.values() for p in principals]
    assert sorted(held) == sorted(iot.certificate_ids())


async def test_access_denied_stops_create_early(tmp_path: Path) -> None:
    plane = FakePlane(fail={"AttachPolicy": DENIED})
    created, ledger = await create(tmp_path, plane, 20)
    summary = created.summary
    assert summary.stopped_early is not None
    assert "iot:AttachPolicy" in summary.stopped_early
    assert summary.created == 0
    assert plane.calls["AttachPolicy"] <= 4  # one per worker at most, not one per thing
    plane.fail.clear()
    assert (await clean(tmp_path, plane, ledger)).summary.forgotten
    assert plane.iot.is_empty()


async def test_a_failed_clean_keeps_the_ledger_and_the_policy(tmp_path: Path) -> None:
    plane = FakePlane()
    created, ledger = await create(tmp_path, plane, 3)
    plane.fail["DeleteThing"] = "InternalFailureException"
    cleaned = await clean(tmp_path, plane, ledger)
    assert cleaned.summary.failed == 3
    assert not cleaned.summary.forgotten
    assert policy_name(created.fleet_id) in plane.iot.policies  # still held until things go
    plane.fail.clear()
    assert (await clean(tmp_path, plane, ledger)).summary.forgotten
    assert plane.iot.is_empty()


async def test_discovery_pages_through_a_fleet_and_adopts_only_its_own(tmp_path: Path) -> None:
    """clean --fleet after the ledger was lost; lists page two items at a time."""
    plane = FakePlane(FakeIot(page_size=2))
    iot = plane.iot
    created, ledger = await create(tmp_path, plane, 5)
    fleet_id = created.fleet_id
    forget(tmp_path, ledger)
    names = sorted(iot.things)
    # a certificate of the fleet that also holds someone else's policy
    held_elsewhere = iot.principals[names[0]][0]
    iot.create_policy("theirs", "{}")
    iot.attach_policy("theirs", held_elsewhere)
    # a second certificate on a fleet thing, attached to nothing else: also the fleet's alone
    extra = iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iot.attach_thing_principal(names[1], extra)
    iot.create_thing("not-ours", {"attributes": {"elf_fleet": "zzzzzzzz"}})

    cleaned = await clean(tmp_path, plane, Ledger.open(tmp_path, create=True), fleet_id)
    assert cleaned.summary.removed == 5
    assert sorted(iot.things) == ["not-ours"]
    remaining = {f"arn:aws:iot:us-west-2:123456789012:cert/{c}" for c in iot.certificate_ids()}
    assert remaining == {held_elsewhere, extra}
    assert iot.policies.keys() == {"theirs"}  # ours is gone: discovery detached it from both
    warnings = "\n".join(cleaned.summary.warnings)
    assert f"{names[0]}: detached {held_elsewhere} (also held by policy theirs)" in warnings
    assert f"{names[1]}: detached {extra} (a second principal)" in warnings


async def test_fake_enforces_the_clean_up_order() -> None:
    """The fake is only worth its tests if it refuses what AWS refuses."""
    iot = FakeIot()
    plane = FakePlane(iot)
    cert = await plane.call("CreateKeysAndCertificate", setAsActive=True)
    await plane.call("CreateThing", thingName="t")
    await plane.call("AttachThingPrincipal", thingName="t", principal=cert["certificateArn"])
    with pytest.raises(AwsError, match="CertificateStateException"):
        await plane.call("DeleteCertificate", certificateId=cert["certificateId"])
    await plane.call("UpdateCertificate", certificateId=cert["certificateId"], newStatus="INACTIVE")
    with pytest.raises(AwsError, match="DeleteConflictException"):
        await plane.call("DeleteCertificate", certificateId=cert["certificateId"])
    await plane.call("DetachThingPrincipal", thingName="t", principal=cert["certificateArn"])
    with pytest.raises(AwsError, match="InvalidRequestException"):  # not yet propagated
        await plane.call("DeleteThing", thingName="t")
    await plane.call("DeleteThing", thingName="t")
    await plane.call("DeleteCertificate", certificateId=cert["certificateId"])
    with pytest.raises(AwsError, match="ResourceNotFoundException"):
        await plane.call("DescribeCertificate", certificateId=cert["certificateId"])
    assert iot.is_empty()


async def test_fan_out_bounds_concurrency_and_stops_early() -> None:
    running, peak, done = 0, 0, []

    async def step(item: int) -> bool:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1
        done.append(item)
        return item != 5

    await fan_out(range(20), step, concurrency=3, progress=NoProgress())
    assert sorted(done) == list(range(20))
    assert peak == 3

    done.clear()
    await fan_out(range(20), step, concurrency=3, progress=NoProgress(), stopped=lambda: 5 in done)
    assert 5 in done
    assert len(done) < 20  # no worker took a new item after the stop


async def test_fan_out_cancels_the_other_workers_when_one_fails() -> None:
    """A failure (or a killed run) must not leave workers calling AWS behind the caller's back."""
    cancelled: list[int] = []

    async def step(item: int) -> bool:
        if item == 0:
            raise RuntimeError("boom")
        try:
            for _ in range(100):  # long enough for item 0 to fail first
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return True

    with pytest.raises(RuntimeError, match="boom"):
        await fan_out(range(10), step, concurrency=3, progress=NoProgress())
    assert sorted(cancelled) == [1, 2]  # done by the time fan_out returns


async def test_the_controller_has_its_own_certificate_and_policy_and_goes_with_clean(
    tmp_path: Path,
) -> None:
    """`create --controller`: a certificate holding only the controller policy, no thing;
    status shows it apart from the things; clean removes both."""
    plane = FakePlane()
    created, ledger = await create(tmp_path, plane, 3, controller=True)
    name = controller_name(created.prefix)
    assert created.controller == name
    assert sorted(plane.iot.things) == sorted(r.name for r in ledger.things() if r.ready)
    controller = ledger.thing(name)
    controller_policy = controller_policy_name(created.fleet_id)
    assert list(plane.iot.attached[controller_policy]) == [controller.cert_arn]
    assert controller.cert_arn not in plane.iot.attached[policy_name(created.fleet_id)]
    status = fleet_status(tmp_path)
    assert status["controller"] == {"name": name, "state": "ready", "id": controller.cert_id}
    assert status["things"]["total"] == 3
    assert (await clean(tmp_path, plane, ledger)).summary.forgotten
    assert plane.iot.is_empty()


async def test_an_interrupted_controller_is_finished_by_the_next_create(tmp_path: Path) -> None:
    plane = FakePlane()
    created, ledger = await create(tmp_path, plane, 2)
    plane.fail["AttachPolicy"] = "InternalFailureException"
    failed, _ = await create(tmp_path, plane, 0, controller=True)
    assert failed.controller is None
    assert failed.summary.failed == 1
    plane.fail.clear()
    finished, _ = await create(tmp_path, plane, 0)  # no --controller: finishes what it began
    assert finished.controller == controller_name(created.prefix)
    assert len(plane.iot.things) == 2
    assert (await clean(tmp_path, plane, ledger)).summary.forgotten
    assert plane.iot.is_empty()


async def test_clean_fleet_finds_the_controller_without_a_ledger(tmp_path: Path) -> None:
    plane = FakePlane()
    created, ledger = await create(tmp_path, plane, 2, controller=True)
    forget(tmp_path, ledger)
    fresh = Ledger.open(tmp_path, create=True)
    cleaned = await clean(tmp_path, plane, fresh, created.fleet_id)
    assert cleaned.summary.failed == 0
    assert plane.iot.is_empty()
