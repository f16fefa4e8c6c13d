"""Rates, durations and per-API rates as the user writes them."""

from __future__ import annotations

import pytest

from elf_async.errors import UsageError
from elf_async.units import parse_api_rate, parse_duration, parse_rate


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("600/m", 10.0), ("0.5/s", 0.5), ("3", 3.0), ("7200/h", 2.0), (".5", 0.5)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "fast", "10/d", "0/s", "-1/s", "10//s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("60", 60), ("60s", 60), ("5m", 300), ("250ms", 0.25)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_api_rate() -> None:
    assert parse_api_rate("CreateThing=30/s") == ("CreateThing", 30.0)
    with pytest.raises(UsageError):
        parse_api_rate("creatething=30")


def test_a_zero_duration_only_where_a_wait_may_be_skipped() -> None:
    assert parse_duration("0s", what="--metrics-linger", zero=True) == 0.0
    with pytest.raises(UsageError, match="must be above zero"):
        parse_duration("0s", what="--drain")
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration("-1s", what="--metrics-linger", zero=True)
