"""Histograms merge and report in milliseconds; series are per-second deltas."""

from __future__ import annotations

import pytest
from hdrh.histogram import HdrHistogram

from elf_async.metrics import Histogram, Series, merge_series, merged, row_seconds


def test_histogram_percentiles_in_ms() -> None:
    histogram = Histogram()
    for ms in range(1, 1001):
        histogram.record(ms / 1000)
    summary = histogram.summary_ms()
    assert summary["count"] == 1000
    assert summary["p50"] == pytest.approx(500, rel=0.01)
    assert summary["p99"] == pytest.approx(990, rel=0.01)
    assert summary["max"] == pytest.approx(1000, rel=0.01)


def test_empty_histogram_reports_none() -> None:
    summary = Histogram().summary_ms()
    assert summary["count"] == 0
    assert summary["p50"] is None
    assert summary["max"] is None


def test_histograms_merge() -> None:
    a, b = Histogram(), Histogram()
    a.record(0.001)
    b.record(0.003)
    b.record(-1.0)  # clamped to the lowest value, not an error
    total = merged([a, b])
    assert total.count == 3
    assert total.summary_ms()["max"] == pytest.approx(3, rel=0.01)


def test_series_rows_are_deltas() -> None:
    series = Series(("published", "acked"))
    series.sample(1, {"published": 10, "acked": 8}, connected=3)
    series.sample(2, {"published": 25, "acked": 25}, connected=3)
    assert series.rows == [
        {"t": 1, "published": 10, "acked": 8, "connected": 3},
        {"t": 2, "published": 15, "acked": 17, "connected": 3},
    ]


def test_buckets_are_cumulative_at_fixed_bounds() -> None:
    histogram = Histogram()
    for ms in (1, 2, 2, 40, 900, 5000):
        histogram.record(ms / 1000)
    buckets = histogram.buckets((0.001, 0.01, 1.0, 2.0))
    assert buckets.cumulative == (1, 3, 5, 5)
    assert buckets.count == 6
    assert buckets.sum_s == pytest.approx(5.945, rel=0.01)
    assert Histogram().buckets((1.0,)).cumulative == (0,)


def test_a_late_sample_still_closes_its_second_and_the_last_row_its_own() -> None:
    """A row sampled late on a busy machine (3.02) belongs to second 3, not 4; the last row,
    cut short by the end, has a second of its own; a row read back as 2.999 is second 3."""
    assert row_seconds([1.0, 2.0, 3.02, 4.0, 4.3]) == [1, 2, 3, 4, 5]
    assert row_seconds([0.999, 1.999, 2.999]) == [1, 2, 3]
    assert row_seconds([-2.0, -1.0, 0.0, 1.4]) == [-2, -1, 0, 1]
    on_time = [{"t": 1.0, "published": 5}, {"t": 2.0, "published": 5}]
    late = [{"t": 1.0, "published": 3}, {"t": 2.3, "published": 3}, {"t": 2.6, "published": 1}]
    assert merge_series([on_time, late]) == [
        {"t": 1.0, "published": 8},
        {"t": 2.3, "published": 8},
        {"t": 2.6, "published": 1},
    ]


def test_recorded_values_land_where_hdr_itself_would_count_them() -> None:
    """The flush computes HDR's counts-array index itself (for speed): the same counts, total,
    min and max as HDR's own `record_value`, from below 1 µs to above the hour it keeps."""
    histogram = Histogram()
    reference = HdrHistogram(1, 3_600_000_000, 3)
    micros = [0, 1, 2, 1023, 1024, 2047, 2048, 2049, 4095, 4096, 123_456, 10**9, 4 * 10**9]
    micros += [int(1.37**k) for k in range(70)]
    for value in micros:
        histogram.record(value / 1_000_000)
        reference.record_value(min(max(value, 1), 3_600_000_000))
    # The same counts array (its wire form), so the same percentiles, count, max and mean.
    assert histogram.encode() == bytes(reference.encode())
    assert histogram.count == len(micros)
    assert histogram.summary_ms() == Histogram.decode(bytes(reference.encode())).summary_ms()


def test_merged_series_sum_the_planned_devices_and_keep_the_stage() -> None:
    first = [{"t": 1.0, "connected": 2, "target_connected": 2, "stage": None},
             {"t": 2.0, "connected": 3, "target_connected": 4, "stage": 0}]  # fmt: skip
    second = [{"t": 1.0, "connected": 1, "target_connected": 1, "stage": None},
              {"t": 2.0, "connected": 4, "target_connected": 4, "stage": 0}]  # fmt: skip
    assert merge_series([first, second]) == [
        {"t": 1.0, "connected": 3, "target_connected": 3, "stage": None},
        {"t": 2.0, "connected": 7, "target_connected": 8, "stage": 0},
    ]
