"""Load shapes: `--stages` (k6-like: connected devices and per-device rate, each ramped or
held, stage after stage), `--churn` and `--storm`. Pure: parse, check, plan; no I/O.

A stage is ``DURATION:DEVICES[@RATE]``: DEVICES is ``N`` (hold) or ``A..B`` (a linear ramp),
RATE the same with rates (``5/s``, ``1/s..10/s``; without it, --rate). Over the run the
planned number of connected devices N(t) is piecewise linear: device i (its index in the
fleet) is connected while N(t) > i, and its messages fall due at its rate while it is, phases
spread over the fleet as in the constant-rate plan (elf_async.dataplane.schedule), so a
single held stage plans exactly what ``--duration`` does.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from elf_async.errors import UsageError
from elf_async.units import parse_duration, parse_rate

_EPS = 1e-9
_STAGE = re.compile(r"^(?P<duration>[^:@]+):(?P<devices>[^@]+)(?:@(?P<rate>.+))?$")
_DEVICES = re.compile(r"^(\d+)(?:\.\.(\d+))?$")
_CHURN = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)%/(s|sec|m|min|h|hour)$")
_PER_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
STAGES_EXAMPLE = "30s:0..500,2m:500,1m:500@5/s,30s:500..0"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage: over `duration` s, devices and per-device rate go linearly from to."""

    duration: float
    devices: tuple[int, int]
    rate: tuple[float, float]  # messages/s per connected device


Window = tuple[float, float]  # seconds after the start: connected from, to
Piece = tuple[float, float, float, float, float]  # t0, t1, rate at t0, rate at t1, C(t0)


def _stage_rate(text: str, *, what: str) -> float:
    """A stage's rate: as --rate, or 0 (connected, silent)."""
    if text.strip() in ("0", "0/s", "0/m", "0/h"):
        return 0.0
    return parse_rate(text, what=what)


def parse_stage(text: str, *, rate: float) -> Stage:
    """``30s:0..500@5/s`` -> a Stage; `rate` is --rate, for a stage without ``@``."""
    what = f"--stages {text!r}"
    match = _STAGE.match(text.strip())
    if not match:
        raise UsageError(f"{what}: not DURATION:DEVICES[@RATE] (example: {STAGES_EXAMPLE})")
    duration = parse_duration(match["duration"], what=what)
    devices = _DEVICES.match(match["devices"].strip())
    if not devices:
        raise UsageError(f"{what}: devices are N or FROM..TO (whole numbers, e.g. 0..500)")
    start = int(devices[1])
    end = int(devices[2]) if devices[2] is not None else start
    rates = (rate, rate)
    if match["rate"] is not None:
        low, sep, high = match["rate"].partition("..")
        first = _stage_rate(low, what=what)
        rates = (first, _stage_rate(high, what=what) if sep else first)
    return Stage(duration, (start, end), rates)


def parse_stages(text: str, *, rate: float) -> tuple[Stage, ...]:
    """--stages: comma-separated stages, one after the other (they cannot overlap)."""
    parts = [part for part in text.split(",")]
    if not text.strip() or any(not part.strip() for part in parts):
        raise UsageError(f"--stages {text!r}: empty stage (example: {STAGES_EXAMPLE})")
    stages = tuple(parse_stage(part, rate=rate) for part in parts)
    if not any(max(s.devices) and max(s.rate) for s in stages):
        raise UsageError(f"--stages {text!r}: no stage sends anything (every one has 0 devices)")
    return stages


def parse_churn(text: str) -> float:
    """--churn ``5%/min`` -> the fraction of the connected devices cycled per second; at
    most 100%/min (each device at most about once a minute)."""
    match = _CHURN.match(text.strip())
    if not match:
        raise UsageError(f"--churn {text!r}: not PERCENT/TIME (example: 5%/min)")
    per_s = float(match[1]) / 100 / _PER_S[match[2]]
    if per_s <= 0:
        raise UsageError(f"--churn {text!r}: must be above zero")
    if per_s > 1 / 60 + _EPS:
        raise UsageError(f"--churn {text!r}: at most 100%/min (every device once a minute)")
    return per_s


@dataclass(frozen=True)
class Shape:
    """The stages, planned: when each device is connected and when its messages fall due."""

    stages: tuple[Stage, ...]

    @property
    def span(self) -> float:
        return sum(s.duration for s in self.stages)

    @property
    def max_devices(self) -> int:
        return max(max(s.devices) for s in self.stages)

    def bounds(self) -> list[Window]:
        """Each stage's start and end, in seconds after the start."""
        out, t = [], 0.0
        for s in self.stages:
            out.append((t, t + s.duration))
            t += s.duration
        return out

    def stage_at(self, t: float) -> int | None:
        """The index of the stage running `t` s after the start (None: before or after)."""
        for i, (t0, t1) in enumerate(self.bounds()):
            if t0 <= t < t1:
                return i
        return None

    def devices_at(self, t: float) -> int:
        """Devices planned connected at `t`: those with index below N(t)."""
        for s, (t0, t1) in zip(self.stages, self.bounds(), strict=True):
            if t0 <= t < t1:
                a, b = s.devices
                n = a + (b - a) * (t - t0) / s.duration
                return max(0, math.ceil(n - _EPS))
        return 0

    def windows(self, index: int) -> list[Window]:
        """When device `index` is planned connected: N(t) > index (adjacent spans merged)."""
        out: list[Window] = []
        for s, (t0, _) in zip(self.stages, self.bounds(), strict=True):
            span = _active(s, index)
            if span is None:
                continue
            on, off = t0 + span[0], t0 + span[1]
            if out and abs(out[-1][1] - on) < _EPS:
                out[-1] = (out[-1][0], off)
            else:
                out.append((on, off))
        return out

    def schedule(self, index: int, fleet: int) -> StagedSchedule:
        """Device `index`'s messages: at its stages' rates over its windows, its first one a
        fraction index/fleet of a message in (phases spread as `phase_of` spreads them)."""
        pieces: list[Piece] = []
        cumulative = 0.0
        for s, (t0, _) in zip(self.stages, self.bounds(), strict=True):
            span = _active(s, index)
            if span is None:
                continue
            r0, r1 = s.rate
            slope = (r1 - r0) / s.duration
            a, b = span
            rate_a, rate_b = r0 + slope * a, r0 + slope * b
            pieces.append((t0 + a, t0 + b, rate_a, rate_b, cumulative))
            cumulative += (rate_a + rate_b) / 2 * (b - a)
        phase = index / fleet
        total = max(0, math.ceil(cumulative - phase - _EPS))
        return StagedSchedule(tuple(pieces), phase, total, self.span, self, index)

    def planned_per_second(self, indexes: Sequence[int], fleet: int) -> list[int]:
        """Messages due in each whole second of the run (second k: [k, k+1)), for checks."""
        seconds = [0] * math.ceil(self.span - _EPS)
        for index in indexes:
            sched = self.schedule(index, fleet)
            for seq in range(sched.total):
                seconds[min(int(sched.due(seq)), len(seconds) - 1)] += 1
        return seconds


def _active(stage: Stage, index: int) -> Window | None:
    """Where in `stage` (seconds from its start) N(t) > index, if anywhere."""
    a, b = stage.devices
    d = stage.duration
    if a == b:
        return (0.0, d) if index < a else None
    if b > a:
        if index >= b:
            return None
        return (max(0.0, (index - a) / (b - a) * d), d)
    if index >= a:
        return None
    return (0.0, min(d, (a - index) / (a - b) * d))


@dataclass(frozen=True, slots=True)
class StagedSchedule:
    """One device's due times under stages; the interface of `ThingSchedule`, plus `due`
    per message (the staged publisher calls it; the constant-rate one never does)."""

    pieces: tuple[Piece, ...]
    phase_fraction: float  # message k is due when the device's cumulative count reaches k + this
    total: int
    span: float  # the stages' whole length
    shape: Shape  # the stages it follows (a scenario's groups each have theirs)
    place: int  # its index among that shape's devices: connected while N(t) > place

    @property
    def windows(self) -> list[Window]:
        """When the device is planned connected (`Shape.windows` of its place)."""
        return self.shape.windows(self.place)

    @property
    def rate(self) -> float:
        """Mean messages/s over the stages' span (so total/rate is the span; 1 for a device
        with no message, never a division by zero)."""
        return self.total / self.span if self.total else 1.0

    @property
    def phase(self) -> float:
        return self.due(0) if self.total else 0.0

    def _starts(self) -> list[float]:
        return [piece[4] for piece in self.pieces]

    def due(self, seq: int) -> float:
        """Seconds after the start at which message `seq` is due."""
        value = seq + self.phase_fraction
        i = max(0, bisect.bisect_right(self._starts(), value) - 1)
        t0, t1, r0, r1, c0 = self.pieces[i]
        left = value - c0
        a = (r1 - r0) / (t1 - t0) / 2 if t1 > t0 else 0.0
        root = r0 * r0 + 4 * a * left
        below = r0 + math.sqrt(max(root, 0.0))
        x = 2 * left / below if below > 0 else 0.0
        return min(t0 + x, t1)

    def due_by(self, elapsed: float) -> int:
        """How many messages are due `elapsed` seconds after the start."""
        done = 0.0
        for t0, t1, r0, r1, c0 in self.pieces:
            if elapsed < t0:
                break
            x = min(elapsed, t1) - t0
            slope = (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0
            done = c0 + r0 * x + slope * x * x / 2
        if done + _EPS < self.phase_fraction:
            return 0
        return min(self.total, math.floor(done - self.phase_fraction + _EPS) + 1)

    @property
    def last_due(self) -> float:
        return self.due(self.total - 1) if self.total else 0.0


@dataclass(frozen=True)
class ShapePlan:
    """A shaped send: the stages, and the churn and storm over them (it pickles)."""

    shape: Shape
    churn_per_s: float | None = None  # fraction of the connected devices cycled per second
    storm_at: float | None = None  # seconds after the start
    seed: int = 0  # the churn's sample
    # A scenario's groups, each with its own stages (then `shape` is the longest group's,
    # whose span is the run's): their devices' schedules follow their group's shape.
    groups: tuple[tuple[str, Shape], ...] = ()
