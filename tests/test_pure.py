"""Pure logic: units, target resolution, fleet names and policy, ledger states, backoff."""

from __future__ import annotations

from pathlib import Path

import pytest

from elf_async.config import Settings, resolve_target
from elf_async.controlplane.fleet import prefix_problem, topic_root_problem
from elf_async.controlplane.ledger import Ledger
from elf_async.errors import FleetMismatch, LedgerError, UsageError
from elf_async.pacing import RateLimiter, backoff_delay
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


def test_target_prefers_what_the_user_said_then_the_fleet() -> None:
    fleet = {"fleet_id": "abc", "region": "eu-west-1", "endpoint_url": "http://x", "profile": "p"}
    target = resolve_target(Settings(state_dir=Path()), fleet, configured_region="us-east-1")
    assert (target.region, target.endpoint_url, target.profile) == ("eu-west-1", "http://x", "p")
    fresh = resolve_target(Settings(state_dir=Path()), {}, configured_region=None)
    assert fresh.region == "us-west-2"
    with pytest.raises(FleetMismatch, match="eu-west-1"):
        resolve_target(
            Settings(state_dir=Path(), region="us-east-2"), fleet, configured_region=None
        )


def test_name_checks() -> None:
    assert prefix_problem("elf-load_1:a") is None
    assert prefix_problem("bad name") is not None
    assert prefix_problem("x" * 130) is not None
    assert topic_root_problem("load/test") is None
    assert topic_root_problem("elf/#") is not None


def test_ledger_states(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no fleet"):
        Ledger.open(tmp_path)
    with Ledger.open(tmp_path, create=True) as ledger:
        first = ledger.add_things(2, "elf-x", 5)
        assert [r.name for r in first] == ["elf-x-00000", "elf-x-00001"]
        assert [r.name for r in ledger.add_things(1, "elf-x", 5)] == ["elf-x-00002"]
        assert first[0].status == "pending"
        for step in ("cert", "thing", "principal", "policy"):
            ledger.mark("elf-x-00000", step, "created")  # type: ignore[arg-type]
        assert ledger.thing("elf-x-00000").ready
        ledger.mark("elf-x-00001", "thing", "intended")
        ledger.record_error("elf-x-00001", "AccessDeniedException", "no")
        assert ledger.count_by_status() == {"ready": 1, "failed": 1, "pending": 1}
        with pytest.raises(ValueError, match="unknown"):
            ledger.mark("elf-x-00000", "thing", "created", password="x")


def test_backoff_is_capped_and_jittered() -> None:
    delays = [backoff_delay(10, base=0.1, cap=2.0) for _ in range(200)]
    assert max(delays) <= 2.0
    assert len(set(delays)) > 100


async def test_limiter_slows_down_and_recovers() -> None:
    limiter = RateLimiter(10.0)
    limiter.slow_down()
    assert limiter.rate == pytest.approx(8.0)
    for _ in range(100):
        limiter.recover()
    assert limiter.rate == pytest.approx(10.0)
    await limiter.acquire()
    assert limiter.acquired == 1
