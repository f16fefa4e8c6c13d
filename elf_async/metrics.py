"""Latency histograms that merge (HDR), and per-second series sampled from running totals.

Recording stays cheap on the hot path: a value is rounded to ~3 significant digits (what
the HDR histogram keeps anyway) and counted in a dict; the HDR histogram absorbs the counts
when it is read. Counters are plain ints on each worker, sampled once a second. A histogram
made `per_second` also keeps what each second recorded (folded in when it is read, off the hot
path), taken once a second as a `Window`: its HDR encoding, so that the seconds of several
processes or shards merge exactly, never by averaging percentiles.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from hdrh.histogram import HdrHistogram

_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000  # one hour
_DIGITS = 3
_MANTISSA_BITS = 11  # 2048 steps per power of two: finer than 3 significant digits
_EXACT_BELOW_US = 1 << _MANTISSA_BITS  # smaller values are kept as they are

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def _hdr_layout() -> tuple[int, int, int, int]:
    """What HDR's counts-array index needs for this range and precision (unit 1 µs): the
    sub-bucket mask, the shift that turns a value's bit length into its bucket, and the
    half count with its magnitude. Checked against HDR's own `record_value` in the tests."""
    hdr = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)
    if hdr.unit_magnitude:
        raise RuntimeError("HDR histogram layout changed: unit magnitude is not 0")
    magnitude = hdr.sub_bucket_half_count_magnitude
    return hdr.sub_bucket_mask, magnitude + 1, hdr.sub_bucket_half_count, magnitude


_SUB_BUCKET_MASK, _BUCKET_SHIFT, _HALF_COUNT, _HALF_MAGNITUDE = _hdr_layout()


class Histogram:
    """Durations in seconds, kept in microseconds from 1 µs to 1 h (3 significant digits)."""

    __slots__ = ("_hdr", "_pending", "_second")

    def __init__(self, *, per_second: bool = False) -> None:
        self._hdr = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)
        self._pending: dict[int, int] = {}
        self._second: dict[int, int] | None = {} if per_second else None

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1_000_000)
        if micros >= _EXACT_BELOW_US:
            shift = micros.bit_length() - _MANTISSA_BITS
            micros = (micros >> shift) << shift
        pending = self._pending
        pending[micros] = pending.get(micros, 0) + 1

    def _flush(self) -> HdrHistogram:
        """Count the pending values into the HDR histogram. Its `record_value` is ~8 Python
        calls a value (~1.6 µs); at thousands of values a second, three histograms per
        message, that was a measurable share of a paced run: the counts-array index is
        computed here instead, by HDR's own formula from its own layout (`_hdr_layout`)."""
        hdr, second, pending = self._hdr, self._second, self._pending
        if not pending:
            return hdr
        counts, added = hdr.counts, 0
        for micros, count in pending.items():
            value = min(max(micros, _LOWEST_US), _HIGHEST_US)
            bucket = (value | _SUB_BUCKET_MASK).bit_length() - _BUCKET_SHIFT
            counts[((bucket + 1) << _HALF_MAGNITUDE) + (value >> bucket) - _HALF_COUNT] += count
            added += count
            if second is not None:
                second[micros] = second.get(micros, 0) + count
        hdr.total_count += added
        hdr.min_value = min(hdr.min_value, max(min(pending), _LOWEST_US))
        hdr.max_value = max(hdr.max_value, min(max(pending), _HIGHEST_US))
        pending.clear()
        return hdr

    def take_second(self) -> Window:
        """What was recorded since the previous call (of a `per_second` histogram)."""
        self._flush()
        if self._second is None:
            raise TypeError("take_second needs a per_second histogram")
        window = Histogram()
        window._pending, self._second = self._second, {}
        return Window.of(window)

    def merge(self, other: Histogram) -> None:
        self._flush().add(other._flush())

    def encode(self) -> bytes:
        """The HDR wire form (compressed, base64): how a histogram crosses a process boundary."""
        return bytes(self._flush().encode())

    @classmethod
    def decode(cls, *encodings: bytes) -> Histogram:
        """One histogram of the sum of `encodings` (an empty one is an empty histogram)."""
        histogram = cls()
        for data in encodings:
            if data:
                histogram._hdr.decode_and_add(data)
        return histogram

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its HDR encoding (the HDR object itself does not pickle)."""
        return (Histogram.decode, (self.encode(),))

    @property
    def count(self) -> int:
        return int(self._flush().get_total_count())

    def percentile_ms(self, percentile: float) -> float | None:
        hdr = self._flush()
        if not hdr.get_total_count():
            return None
        return round(float(hdr.get_value_at_percentile(percentile)) / 1000.0, 3)

    def buckets(self, bounds: Sequence[float]) -> Buckets:
        """Cumulative counts at each of `bounds` (seconds, ascending), as Prometheus exposes a
        histogram: read from the HDR counts array in one pass (a few ms), at whatever rate the
        caller reads; nothing is added to the recording path. A value counts under a bound
        when the lowest value of its HDR bucket is within it."""
        hdr = self._flush()
        size = hdr.counts_len
        counts = hdr.counts[:size]
        cumulative = list(itertools.accumulate(counts))
        at = [min(hdr.get_counts_array_index(int(b * 1_000_000)), size - 1) for b in bounds]
        sum_us = sum(map(operator.mul, counts, _medians(hdr)))
        total = cumulative[-1]
        return Buckets(tuple(bounds), tuple(cumulative[i] for i in at), total, sum_us / 1e6)

    def summary_ms(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99, p999, max and mean in milliseconds (None when empty)."""
        hdr = self._flush()
        total = int(hdr.get_total_count())
        summary: dict[str, float | int | None] = {"count": total}
        for name, percentile in PERCENTILES.items():
            summary[name] = self.percentile_ms(percentile)
        summary["max"] = round(hdr.get_max_value() / 1000.0, 3) if total else None
        summary["mean"] = round(hdr.get_mean_value() / 1000.0, 3) if total else None
        return summary


_MEDIANS: list[int] = []


def _medians(hdr: HdrHistogram) -> list[int]:
    """The value each slot of the counts array stands for (the middle of its range, as the
    HDR mean counts it): the same for every histogram here, computed once (~0.1 s)."""
    if not _MEDIANS:
        for index in range(hdr.counts_len):
            value = hdr.get_value_from_index(index)
            lowest = hdr.get_lowest_equivalent_value(value)
            highest = hdr.get_highest_equivalent_value(value)
            _MEDIANS.append(lowest + ((highest - lowest + 1) >> 1))
    return _MEDIANS


@dataclass(frozen=True, slots=True)
class Buckets:
    """A histogram as Prometheus shows it: cumulative counts at fixed bounds (seconds), the
    count and the sum (the HDR mean times the count: exact to HDR's 3 digits)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum_s: float


def merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total


@dataclass(frozen=True, slots=True)
class Window:
    """One second of a histogram, as a series row keeps it: its HDR encoding (empty when
    nothing was recorded) and the percentiles the row shows, computed from that encoding."""

    encoded: bytes
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, histogram: Histogram) -> Window:
        if not histogram.count:
            return EMPTY_WINDOW
        p50, p99 = histogram.percentile_ms(50), histogram.percentile_ms(99)
        return cls(histogram.encode(), p50, p99)

    @classmethod
    def merged(cls, windows: Iterable[Window]) -> Window:
        """The windows of one second, as one: their histograms merged, the percentiles
        computed again (never averaged)."""
        return cls.of(Histogram.decode(*(w.encoded for w in windows)))


EMPTY_WINDOW: Final = Window(b"", None, None)


def row_seconds(times: Iterable[float]) -> list[int]:
    """The whole second each row of one series closes, from the rows' times in order. A row
    is sampled at a whole second, late by up to half a second on a busy machine (3.02 closes
    second 3); a row less than a second after the one before (the last, cut short by the end)
    closes a second of its own, so that no two rows of one series share a second."""
    seconds: list[int] = []
    for t in times:
        second = math.ceil(t - 0.5)
        seconds.append(second if not seconds else max(second, seconds[-1] + 1))
    return seconds


PLAN_GAUGES = frozenset({"stage"})  # the same in every part of one run: kept, not summed


def merge_series(parts: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Series that share one time origin, as one: the rows closing the same second
    (`row_seconds`) are summed (counts and gauges alike, but `PLAN_GAUGES`), their `Window`s
    merged; `t` is the latest of them."""
    seconds: dict[int, dict[str, Any]] = {}
    windows: dict[tuple[int, str], list[Window]] = {}
    for rows in parts:
        for second, row in zip(row_seconds(r["t"] for r in rows), rows, strict=True):
            merged_row = seconds.setdefault(second, {"t": row["t"]})
            for name, value in row.items():
                if name == "t":
                    merged_row["t"] = max(merged_row["t"], value)
                elif isinstance(value, Window):
                    windows.setdefault((second, name), []).append(value)
                elif name in PLAN_GAUGES:
                    if merged_row.get(name) is None:
                        merged_row[name] = value
                else:
                    merged_row[name] = merged_row.get(name, 0) + value
    for (second, name), found in windows.items():
        seconds[second][name] = found[0] if len(found) == 1 else Window.merged(found)
    return [seconds[second] for second in sorted(seconds)]


@dataclass
class Series:
    """Per-second deltas of running totals: one row per second of the run."""

    fields: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    _last: dict[str, int] = field(default_factory=dict)

    def sample(self, second: float, totals: Mapping[str, int], **gauges: Any) -> dict[str, Any]:
        """Record what happened since the previous sample; `gauges` are stored as they are."""
        row: dict[str, Any] = {"t": round(second, 3)}
        for name in self.fields:
            value = totals.get(name, 0)
            row[name] = value - self._last.get(name, 0)
            self._last[name] = value
        row.update(gauges)
        self.rows.append(row)
        return row
