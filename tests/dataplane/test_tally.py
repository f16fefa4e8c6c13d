"""The send counters (elf_async.dataplane.tally): summed by name, whatever keeps them."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from elf_async.dataplane.sender import SERIES_FIELDS
from elf_async.dataplane.tally import COUNTERS, Totals


@dataclass
class Row:
    """Counters kept as plain attributes, as a Publisher or a report row keeps them."""

    scheduled: int
    published: int
    acked: int
    failed: int
    retransmitted: int
    reconnects: int


def test_totals_sum_every_counter_by_name() -> None:
    rows = [Row(10, 9, 8, 1, 2, 1), Row(5, 5, 5, 0, 0, 0), Row(3, 0, 0, 0, 0, 2)]
    assert Totals.of(rows) == Totals(
        scheduled=18, published=14, acked=13, failed=1, retransmitted=2, reconnects=3
    )


def test_nothing_counted_is_all_zero() -> None:
    assert Totals.of([]) == Totals()
    assert set(Totals().as_dict().values()) == {0}


def test_totals_add_up_across_workers_and_cross_process_boundaries() -> None:
    worker_1, worker_2 = Totals.of([Row(4, 3, 2, 1, 0, 1)]), Totals.of([Row(6, 6, 6, 0, 1, 0)])
    summed = Totals.of(pickle.loads(pickle.dumps(t)) for t in (worker_1, worker_2))
    assert summed == Totals.of([Row(4, 3, 2, 1, 0, 1), Row(6, 6, 6, 0, 1, 0)])


def test_as_dict_names_each_counter_once_in_order() -> None:
    totals = Totals.of([Row(1, 2, 3, 4, 5, 6)])
    assert totals.as_dict() == dict(zip(COUNTERS, (1, 2, 3, 4, 5, 6), strict=True))


def test_the_series_samples_counters_that_exist() -> None:
    """`Series.sample` reads a missing name as 0: a misspelt one would chart nothing."""
    assert set(SERIES_FIELDS) <= set(COUNTERS)
