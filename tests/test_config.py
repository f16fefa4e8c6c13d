"""Which account, region and endpoint a command targets: what the user said, then the fleet."""

from __future__ import annotations

from pathlib import Path

import pytest

from elf_async.config import Settings, resolve_target
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
