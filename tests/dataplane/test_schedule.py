"""The open-loop schedule: due times, phase spreading, counts that match rate x duration."""

from __future__ import annotations

from typing import Any

import pytest

from elf_async.dataplane.schedule import ThingSchedule, messages_in, phase_of, plan
from elf_async.shards import Shard


def test_due_times_are_start_plus_phase_plus_k_over_rate() -> None:
    schedule = ThingSchedule(rate=4.0, phase=0.1, total=10)
    assert [schedule.due(k) for k in range(3)] == pytest.approx([0.1, 0.35, 0.6])
    assert schedule.last_due == pytest.approx(0.1 + 9 / 4)


def test_due_by_counts_messages_whose_time_has_come() -> None:
    schedule = ThingSchedule(rate=2.0, phase=0.25, total=5)
    assert schedule.due_by(0.0) == 0
    assert schedule.due_by(0.25) == 1
    assert schedule.due_by(0.74) == 1
    assert schedule.due_by(0.75) == 2
    assert schedule.due_by(100.0) == 5  # never more than the total


def test_phases_spread_the_fleet_over_the_first_interval() -> None:
    phases = [phase_of(i, 4, rate=2.0) for i in range(4)]
    assert phases == pytest.approx([0.0, 0.125, 0.25, 0.375])
    assert all(phase < 1 / 2.0 for phase in phases)


@pytest.mark.parametrize(
    ("rate", "duration", "things"),
    [(1.0, 10.0, 1), (1.0, 3.0, 7), (10.0, 2.5, 13), (0.5, 3.0, 5), (7.3, 1.9, 3), (100, 60, 9)],
)
def test_messages_per_thing_equal_rate_times_duration(
    rate: float, duration: float, things: int
) -> None:
    for schedule in plan(things, rate, duration=duration):
        assert abs(schedule.total - rate * duration) <= 1
    if float(rate * duration).is_integer():
        assert all(s.total == rate * duration for s in plan(things, rate, duration=duration))


def test_count_gives_exactly_count_messages() -> None:
    assert [s.total for s in plan(3, 5.0, count=7)] == [7, 7, 7]


def test_messages_in_stops_before_the_end() -> None:
    assert messages_in(1.0, 10.0, 0.0) == 10  # 0.0 .. 0.9, not 1.0
    assert messages_in(1.0, 10.0, 0.05) == 10
    assert messages_in(0.01, 1.0, 0.5) == 0


def test_plan_needs_exactly_one_limit() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        plan(1, 1.0)


@pytest.mark.parametrize(("fleet", "shards"), [(10, 1), (10, 3), (9, 3), (7, 4), (3, 5), (100, 7)])
@pytest.mark.parametrize("limit", [{"duration": 2.5}, {"count": 4}])
def test_the_shards_schedules_together_are_the_single_process_schedule(
    fleet: int, shards: int, limit: dict[str, Any]
) -> None:
    """Each shard plans only its slice, with the phases of the whole fleet: concatenated in
    shard order they are exactly the plan one process makes of the whole fleet."""
    union = []
    for index in range(shards):
        owned = Shard(index, shards).indexes(fleet)
        union += plan(len(owned), 3.0, indexes=list(owned), fleet=fleet, **limit)
    assert union == plan(fleet, 3.0, **limit)


def test_a_shard_plan_refuses_indexes_outside_its_fleet() -> None:
    with pytest.raises(ValueError, match="fleet of 4"):
        plan(2, 1.0, count=1, indexes=[3, 4], fleet=4)
