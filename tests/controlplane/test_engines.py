"""The create and clean engines in-process, on asyncio and on uvloop, with a guard that fails
any callback blocking the event loop (an AWS load generator must never stall its own loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import BLOCKING_LIMIT_S, MotoServer, blocking_guard

from elf_async.config import Settings
from elf_async.controlplane.clean import clean_fleet
from elf_async.controlplane.create import CreateRequest, create_fleet
from elf_async.progress import NoProgress


async def test_create_and_clean_in_process(
    moto: MotoServer, tmp_path: Path, iot: Any, no_blocking_calls: None
) -> None:
    settings = Settings(state_dir=tmp_path / "state", endpoint_url=moto.url)
    request = CreateRequest(count=8, cert_mode="csr", key_type="rsa", concurrency=8)
    created = await create_fleet(settings, request, NoProgress())
    assert created.summary.created == 8
    assert len(iot.list_things()["things"]) == 8
    cleaned = await clean_fleet(settings, fleet_id=None, concurrency=8, progress=NoProgress())
    assert cleaned.summary.forgotten
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []


async def test_the_guard_catches_a_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(AssertionError, match="blocking calls"), blocking_guard(caplog):  # noqa: PT012
        await asyncio.sleep(0)
        time.sleep(BLOCKING_LIMIT_S * 2)  # noqa: ASYNC251 - the point of the test
        await asyncio.sleep(0)
