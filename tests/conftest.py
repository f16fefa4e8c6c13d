"""Every test: the shared fixtures (tests/support), and every async test on asyncio and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import uvloop

pytest_plugins = ["support.fixtures", "support.mqtt", "support.local", "support.send"]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
    """Every async test runs twice: on plain asyncio and on uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
