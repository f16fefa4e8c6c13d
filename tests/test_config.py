"""Which account, region and endpoint a command targets: what the user said, then the fleet."""

from __future__ import annotations

from pathlib import Path

import pytest

from elf_async.config import Settings, check_region, resolve_target
from elf_async.errors import FleetMismatch


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


def test_the_fleets_region_applies_without_one_and_only_another_given_one_is_refused() -> None:
    """The local stack's region (`default_region`) is a default, below the fleet's: a fleet
    created with --region elsewhere is still found without --region."""
    fleet = {"fleet_id": "abc", "region": "eu-west-1"}
    local = Settings(state_dir=Path(), default_region="us-west-2")
    assert resolve_target(local, fleet, configured_region="us-east-1").region == "eu-west-1"
    assert resolve_target(local, {}, configured_region="us-east-1").region == "us-west-2"
    same = Settings(state_dir=Path(), region="eu-west-1", default_region="us-west-2")
    assert resolve_target(same, fleet, configured_region=None).region == "eu-west-1"
    with pytest.raises(FleetMismatch, match="lives in eu-west-1, not in us-east-1: drop --region"):
        check_region(Settings(state_dir=Path(), region="us-east-1"), fleet)
    check_region(Settings(state_dir=Path()), fleet)
