"""Where a command's calls go: `--local` resolved in one place (jobs.target.aim), and the
broker endpoint from the flag, else the fleet's cache (no network in either case)."""

from __future__ import annotations

from pathlib import Path

import pytest

from elf_async.config import Settings
from elf_async.controlplane.create import CreateRequest
from elf_async.controlplane.ledger import Ledger
from elf_async.dataplane.options import ConnectOptions
from elf_async.errors import LocalStackError
from elf_async.jobs.target import Aim, aim, resolve_endpoint


def test_without_local_nothing_changes(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, region="eu-west-1")
    aimed = aim(settings)
    assert aimed == Aim(settings, None)
    request = CreateRequest(count=2, cert_mode="aws")
    assert aimed.create_request(request) is request


def test_local_without_a_running_stack_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalStackError, match="no local stack is running"):
        aim(Settings(state_dir=tmp_path, local=True))


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("flag.example", None, ("flag.example", 8883)),
        ("flag.example", 443, ("flag.example", 443)),
        (None, None, ("cached.example", 8883)),
        (None, 443, ("cached.example", 443)),
    ],
)
async def test_the_endpoint_is_the_flag_else_the_cache(
    tmp_path: Path, host: str | None, port: int | None, expected: tuple[str, int]
) -> None:
    connect = ConnectOptions(
        mqtt_host=host, port=port, ca_file=None, connect_per_s=100.0, connect_timeout=10.0,
        connect_retries=3, keepalive=60, allow_over_aws_limits=False,
    )  # fmt: skip
    with Ledger.open(tmp_path, create=True) as ledger:
        ledger.set_meta(mqtt_endpoint="cached.example")
        endpoint = await resolve_endpoint(aim(Settings(state_dir=tmp_path)), ledger, connect)
    assert (endpoint.host, endpoint.port) == expected
    assert "-----BEGIN CERTIFICATE-----" in endpoint.ca_pem  # Amazon's roots by default
