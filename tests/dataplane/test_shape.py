"""The load-shape planner: parsing, device windows, due times, churn. Pure arithmetic."""

from __future__ import annotations

import pytest

from elf_async.dataplane.schedule import plan
from elf_async.dataplane.shape import Shape, Stage, parse_churn, parse_stage, parse_stages
from elf_async.errors import UsageError


def test_a_stage_is_duration_devices_and_an_optional_rate() -> None:
    assert parse_stage("30s:0..500", rate=1.0) == Stage(30.0, (0, 500), (1.0, 1.0))
    assert parse_stage("2m:500", rate=1.0) == Stage(120.0, (500, 500), (1.0, 1.0))
    assert parse_stage("1m:500@5/s", rate=1.0) == Stage(60.0, (500, 500), (5.0, 5.0))
    assert parse_stage("10s:3@1/s..10/s", rate=1.0) == Stage(10.0, (3, 3), (1.0, 10.0))
    assert parse_stage("10s:3@0..60/m", rate=1.0) == Stage(10.0, (3, 3), (0.0, 1.0))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty stage"),
        ("5s:1,,5s:2", "empty stage"),
        ("5s", "DURATION:DEVICES"),
        ("5s:-3", "FROM..TO"),
        ("5s:1..2..3", "FROM..TO"),
        ("0s:3", "above zero"),
        ("5s:3@-1/s", "not a rate"),
        ("5s:3@fast", "not a rate"),
        ("5s:0", "no stage sends anything"),
    ],
)
def test_malformed_stages_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_stages(text, rate=1.0)


def test_a_held_stage_plans_what_duration_plans() -> None:
    shape = Shape(parse_stages("10s:4", rate=3.0))
    for index, constant in enumerate(plan(4, 3.0, duration=10.0)):
        staged = shape.schedule(index, 4)
        assert staged.total == constant.total
        assert [staged.due(k) for k in range(staged.total)] == pytest.approx(
            [constant.due(k) for k in range(constant.total)]
        )
        assert staged.due_by(5.0) == constant.due_by(5.0)
        assert staged.total / staged.rate == pytest.approx(10.0)  # the span, as `schedule_span`


def test_devices_connect_while_the_planned_count_is_above_their_index() -> None:
    shape = Shape(parse_stages("5s:0..40,5s:40,5s:40..0", rate=10.0))
    assert shape.windows(0) == [(0.0, 15.0)]
    assert shape.windows(39) == [pytest.approx((4.875, 10.125))]
    assert [shape.devices_at(t + 0.5) for t in range(15)] == (
        [4, 12, 20, 28, 36] + [40] * 5 + [36, 28, 20, 12, 4]
    )
    assert shape.devices_at(15.0) == 0  # after the last stage
    for t in (0.5, 2.25, 7.0, 12.9):  # the windows say what the count says
        assert sum(any(a < t < b for a, b in shape.windows(i)) for i in range(40)) == (
            shape.devices_at(t)
        )


def test_a_device_can_leave_and_come_back() -> None:
    shape = Shape(parse_stages("4s:2,4s:2..0,4s:0..2", rate=1.0))
    assert shape.windows(1) == [(0.0, 6.0), (10.0, 12.0)]
    schedule = shape.schedule(1, 2)
    dues = [schedule.due(k) for k in range(schedule.total)]
    assert all(0 <= t < 6 or 10 <= t < 12 for t in dues)
    assert dues == sorted(dues)
    assert schedule.due_by(8.0) == sum(t <= 8.0 for t in dues)


def test_a_rate_step_and_a_rate_ramp() -> None:
    step = Shape(parse_stages("5s:1@2/s,5s:1@10/s", rate=1.0))
    assert step.planned_per_second([0], 1) == [2] * 5 + [10] * 5
    ramp = Shape(parse_stages("10s:1@0..10/s", rate=1.0)).schedule(0, 1)
    assert ramp.total == 50  # the mean rate, 5/s, for 10 s
    dues = [ramp.due(k) for k in range(ramp.total)]
    assert dues == sorted(dues)
    assert ramp.due(49) < 10
    assert ramp.due_by(5.0) == sum(t <= 5.0 for t in dues) == 13  # a quarter of 50, rounded up


def test_the_stages_plan_adds_up_over_the_fleet() -> None:
    shape = Shape(parse_stages("5s:0..40,5s:40,5s:40..0", rate=10.0))
    per_second = shape.planned_per_second(range(40), 40)
    assert sum(per_second) == sum(shape.schedule(i, 40).total for i in range(40))
    assert per_second[5:10] == [400] * 5  # the hold: 40 devices at 10/s
    assert per_second[:5] == sorted(per_second[:5])  # the ramps: up, then down
    assert per_second[10:] == sorted(per_second[10:], reverse=True)


def test_churn_is_a_share_per_time_at_most_everything_per_minute() -> None:
    assert parse_churn("5%/min") == pytest.approx(0.05 / 60)
    assert parse_churn("100%/m") == pytest.approx(1 / 60)
    assert parse_churn("1%/s") == pytest.approx(0.01)  # 60%/min
    for text, fragment in [("200%/min", "at most 100%/min"), ("5%", "PERCENT/TIME"),
                           ("0%/min", "above zero")]:  # fmt: skip
        with pytest.raises(UsageError, match=fragment):
            parse_churn(text)
