"""The devices' lifecycle under a load shape: its plan (windows, the planned connected count)
is the schedules' own, whatever the things' indexes in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

import elf_async
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.lifecycle import Lifecycle
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, ThingPlan
from elf_async.dataplane.sender import Shared
from elf_async.dataplane.shape import Shape, ShapePlan, parse_stages
from elf_async.dataplane.takeover import Takeover

CA_PEM = (Path(elf_async.__file__).parent / "data" / "AmazonRootCA.pem").read_text()


def _lifecycle(plans: list[tuple[Shape, int, int, int]], run: Shape) -> Lifecycle:
    """A lifecycle over things (shape, ledger index, place, size): adopted, not started."""
    things = [
        ThingPlan(
            Identity(f"t{index}", index, Path("k"), Path("c")),
            f"elf/t{index}",
            shape.schedule(place, size),
            place,
        )
        for shape, index, place, size in plans
    ]
    spec = build_spec(message="x", json_message=None, template=None, size=None, stamp=False)
    send_plan = SendPlan(things, spec, qos=1, window=10, shape=ShapePlan(run))
    connector = Connector(Endpoint("127.0.0.1", 8883, CA_PEM), rate=10.0, timeout=1.0, retries=0)
    lifecycle = Lifecycle(send_plan.shape or ShapePlan(run), connector, Takeover(), drain=1.0)
    lifecycle.adopt(send_plan.publishers(Shared()))
    return lifecycle


async def test_windows_and_target_follow_the_planned_places_not_the_ledger_indexes() -> None:
    # Three ready things of a fleet whose thing 1 failed creation: places 0, 1, 2.
    shape = Shape(parse_stages("3s:0..3,3s:3", rate=1.0))
    lifecycle = _lifecycle([(shape, 0, 0, 3), (shape, 2, 1, 3), (shape, 3, 2, 3)], shape)
    assert [d.windows for d in lifecycle.devices] == [shape.windows(p) for p in range(3)]
    assert all(d.windows for d in lifecycle.devices)  # thing 3 too, though 3 >= the 3 devices
    targets = [lifecycle.gauges(float(t))["target_connected"] for t in range(1, 7)]
    assert targets == [shape.devices_at(float(t)) for t in range(1, 7)] == [1, 2, 3, 3, 3, 0]


async def test_devices_of_different_shapes_add_up() -> None:
    ramp = Shape(parse_stages("3s:0..6,3s:6..0", rate=1.0))
    held = Shape(parse_stages("6s:2", rate=1.0))
    plans = [(ramp, i, i, 6) for i in range(6)] + [(held, 6 + i, i, 2) for i in range(2)]
    lifecycle = _lifecycle(plans, ramp)
    assert [d.windows for d in lifecycle.devices[6:]] == [[(0.0, 6.0)]] * 2
    for t in (0.5, 1.0, 2.5, 3.0, 4.2, 5.9):
        planned = lifecycle.gauges(t)["target_connected"]
        assert planned == ramp.devices_at(t) + held.devices_at(t)


@pytest.mark.parametrize("elapsed", [-1.0, 7.0])
async def test_no_device_is_planned_outside_the_stages(elapsed: float) -> None:
    shape = Shape(parse_stages("2s:2", rate=1.0))
    lifecycle = _lifecycle([(shape, 5, 0, 2), (shape, 9, 1, 2)], shape)
    assert lifecycle.gauges(elapsed)["target_connected"] == 0
