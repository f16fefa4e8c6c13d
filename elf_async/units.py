"""Parsing of the human units on the command line: rates, durations, sizes."""

from __future__ import annotations

import re

from elf_async.errors import UsageError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PER |= {"h": 3600.0, "hour": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_rate(text: str, *, what: str = "rate") -> float:
    """``10/s``, ``600/m``, ``0.5/s`` or a bare number (per second) -> events per second."""
    match = _RATE.match(text)
    if not match:
        raise UsageError(f"{what}: {text!r} is not a rate (examples: 10/s, 600/m, 0.5)")
    value = float(match.group(1)) / _PER[match.group(2) or "s"]
    if value <= 0:
        raise UsageError(f"{what}: {text!r} must be above zero")
    return value


def parse_duration(text: str, *, what: str = "duration", zero: bool = False) -> float:
    """``60``, ``60s``, ``5m``, ``250ms`` -> seconds; 0 only where `zero` (a wait that may be
    skipped)."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"{what}: {text!r} is not a duration (examples: 60, 60s, 5m)")
    value = float(match.group(1)) * _SCALE[match.group(2)]
    if value < 0 or (value == 0 and not zero):
        raise UsageError(f"{what}: {text!r} must be above zero")
    return value


def parse_api_rate(text: str) -> tuple[str, float]:
    """``CreateThing=30/s`` -> ("CreateThing", 30.0)."""
    name, sep, rate = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Z][A-Za-z]+", name.strip()):
        raise UsageError(f"--api-rate: {text!r} is not API=RATE (example: CreateThing=30/s)")
    return name.strip(), parse_rate(rate, what=f"--api-rate {name.strip()}")
