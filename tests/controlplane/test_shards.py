"""The shard primitive at the function level (what an engine that starts shards elsewhere
calls): `create_fleet` and `clean_fleet` with a `Shard`, two state dirs, one moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.fixtures import MotoServer

from elf_async.config import Settings
from elf_async.controlplane.clean import clean_fleet
from elf_async.controlplane.create import CreateRequest, create_fleet
from elf_async.controlplane.fleet import fleet_id_of_run
from elf_async.controlplane.ledger import Ledger
from elf_async.progress import NoProgress
from elf_async.shards import Shard

FLEET = 7


def names(iot: Any) -> list[str]:
    return sorted(t["thingName"] for t in iot.list_things()["things"])


async def test_shards_make_disjoint_slices_of_one_fleet_and_clean_only_their_own(
    moto: MotoServer, iot: Any, tmp_path: Path
) -> None:
    fleet_id = fleet_id_of_run("nightly-42")
    assert fleet_id == fleet_id_of_run("nightly-42") != fleet_id_of_run("nightly-43")
    dirs = [tmp_path / f"shard-{i}" for i in range(3)]
    for index, state_dir in enumerate(dirs):
        request = CreateRequest(count=FLEET, fleet_id=fleet_id, shard=Shard(index, 3))
        result = await create_fleet(
            Settings(state_dir=state_dir, endpoint_url=moto.url), request, NoProgress()
        )
        assert result.summary.failed == 0
        assert result.fleet_id == fleet_id
    everything = [f"elf-{fleet_id}-{i:05d}" for i in range(FLEET)]
    assert names(iot) == everything
    with Ledger.open(dirs[2]) as ledger:  # 7 things in 3 shards: 2, 2, 3
        assert [r.index for r in ledger.things()] == [4, 5, 6]
        assert ledger.meta()["shard"] == "2/3"

    cleaned = await clean_fleet(
        Settings(state_dir=dirs[1], endpoint_url=moto.url),
        fleet_id=None,
        concurrency=4,
        progress=NoProgress(),
        shard=Shard(1, 3),
    )
    assert cleaned is not None
    assert cleaned.summary.removed == 2
    assert names(iot) == everything[:2] + everything[4:]
    assert any("left the policy" in w for w in cleaned.summary.warnings)
    assert [p["policyName"] for p in iot.list_policies()["policies"]] == [f"elf-{fleet_id}-policy"]

    every = await clean_fleet(  # from shard 0's state dir: every shard's things
        Settings(state_dir=dirs[0], endpoint_url=moto.url),
        fleet_id=fleet_id,
        concurrency=4,
        progress=NoProgress(),
    )
    assert every is not None
    assert every.summary.forgotten
    assert names(iot) == []
    assert iot.list_policies()["policies"] == []
    assert iot.list_certificates()["certificates"] == []
