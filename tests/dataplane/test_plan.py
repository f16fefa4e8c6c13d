"""A send's plan: the fleet cut into a scenario's groups."""

from __future__ import annotations

import pytest

from elf_async.dataplane.plan import fleet_slices


@pytest.mark.parametrize(
    ("size", "shares", "counts"),
    [
        (10, [0.5, 0.5], [5, 5]),
        (10, [1 / 3, 1 / 3, 1 / 3], [4, 3, 3]),  # the largest remainders, the first on a tie
        (7, [0.2, 0.8], [1, 6]),
        (3, [0.1, 0.9], [0, 3]),
        (4, [2 / 4, 1 / 4, 1 / 4], [2, 1, 1]),
        (1000, [0.001, 0.999], [1, 999]),
    ],
)
def test_slices_are_contiguous_and_add_up_to_the_fleet(
    size: int, shares: list[float], counts: list[int]
) -> None:
    slices = fleet_slices(size, shares)
    assert [len(s) for s in slices] == counts
    assert [i for s in slices for i in s] == list(range(size))
