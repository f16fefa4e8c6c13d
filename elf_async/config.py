"""Global settings and the decision of which AWS target a command talks to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from elf_async.errors import FleetMismatch

DEFAULT_REGION = "us-west-2"
DEFAULT_STATE_DIR = Path(".elf")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the global options said. `None` means the user did not say."""

    state_dir: Path
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    verbose: bool = False
    quiet: bool = False
    local: bool = False  # target the embedded local stack (resolved by jobs.target.aim)
    # The region when neither the user nor the fleet names one: the local stack's (set by
    # jobs.target.aim); None: the AWS config's, else DEFAULT_REGION.
    default_region: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """Where the control-plane calls go."""

    region: str
    profile: str | None
    endpoint_url: str | None


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL")  # botocore's, first wins


def environment_endpoint() -> str | None:
    """The control-plane endpoint botocore itself would honour from the environment."""
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def check_region(settings: Settings, fleet: Mapping[str, str]) -> None:
    """A fleet remembers where it was created: a command explicitly pointed at another region
    is refused, on every command, instead of failing later with ResourceNotFound (the seed's
    trap) or measuring a fleet it was not pointed at. Without --region the fleet's applies."""
    fleet_region = fleet.get("region")
    if settings.region and fleet_region and settings.region != fleet_region:
        raise FleetMismatch(
            f"the fleet {fleet.get('fleet_id', '?')} lives in {fleet_region}, not in "
            f"{settings.region}: drop --region or use another --state-dir"
        )


def resolve_target(
    settings: Settings, fleet: dict[str, str], *, configured_region: str | None
) -> Target:
    """Decide region, profile and endpoint: what the user said (`check_region`), else the
    fleet's, else defaults (the local stack's region, the AWS config's, DEFAULT_REGION)."""
    check_region(settings, fleet)
    fleet_endpoint = fleet.get("endpoint_url")  # an explicit endpoint may differ (a proxy)
    region = (
        settings.region
        or fleet.get("region")
        or settings.default_region
        or configured_region
        or DEFAULT_REGION
    )
    profile = settings.profile or fleet.get("profile") or None
    endpoint = settings.endpoint_url or fleet_endpoint or environment_endpoint()
    return Target(region=region, profile=profile, endpoint_url=endpoint)
