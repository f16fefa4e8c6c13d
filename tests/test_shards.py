"""The shard primitive: slices, budget shares, the environment of array jobs, --start-at."""

from __future__ import annotations

import pytest

from elf_async.errors import UsageError
from elf_async.shards import (
    START_TOLERANCE_S,
    Shard,
    choose_shard,
    parse_shard,
    parse_start_at,
    series_origin,
    shard_from_env,
)


@pytest.mark.parametrize("fleet", [0, 1, 2, 9, 10, 11, 1000])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_slices_cover_the_fleet_once_and_evenly(fleet: int, count: int) -> None:
    slices = [Shard(i, count).indexes(fleet) for i in range(count)]
    assert [i for s in slices for i in s] == list(range(fleet))  # contiguous, no overlap
    assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_a_budget_splits_evenly() -> None:
    assert Shard(2, 4).share(500.0) == 125.0
    assert str(Shard(2, 4)) == "2/4"
    assert Shard(2, 4).as_json() == {"index": 2, "count": 4}


def test_parse_shard() -> None:
    assert parse_shard(" 1 / 3 ") == Shard(1, 3)
    for text, fragment in [("3/3", "0 to 2"), ("-1/2", "0 to 1"), ("1/0", "at least 1"),
                           ("x", "not I/N"), ("1", "not I/N"), ("1/2/3", "not I/N")]:  # fmt: skip
        with pytest.raises(UsageError, match=fragment):
            parse_shard(text)


def test_the_environment_of_array_jobs() -> None:
    assert shard_from_env({}) is None
    k8s = {"JOB_COMPLETION_INDEX": "2", "ELF_SHARD_COUNT": "3"}
    assert shard_from_env(k8s) == Shard(2, 3)
    batch = {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "5"}
    assert shard_from_env(batch) == Shard(0, 5)
    assert choose_shard("1/2", k8s) == Shard(1, 2)  # --shard wins
    with pytest.raises(UsageError, match="ELF_SHARD_COUNT is not"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX/ELF_SHARD_COUNT 3/3"):
        shard_from_env({"JOB_COMPLETION_INDEX": "3", "ELF_SHARD_COUNT": "3"})


def test_start_at_forms() -> None:
    now = 1_800_000_000.0
    assert parse_start_at("+30s", now=now) == now + 30
    assert parse_start_at("1800000100", now=now) == 1_800_000_100
    assert parse_start_at("2027-01-15T08:00:00Z", now=now) == now
    assert parse_start_at("2027-01-15T09:00:00+01:00", now=now) == parse_start_at(
        "2027-01-15T08:00:00Z", now=now
    )
    assert parse_start_at(str(now - START_TOLERANCE_S + 0.5), now=now) < now  # late: caught up
    with pytest.raises(UsageError, match="in the past"):
        parse_start_at(str(now - START_TOLERANCE_S - 0.5), now=now)
    for text in ("garbage", "+", "+x", "nan", ""):
        with pytest.raises(UsageError):
            parse_start_at(text, now=now)


def test_series_origin_is_whole_seconds_before_the_start() -> None:
    assert series_origin(100.25, 97.5) == 97.25
    assert series_origin(100.25, 97.25) == 97.25
    assert series_origin(100.25, 101.0) == 100.25  # already late: the start itself
