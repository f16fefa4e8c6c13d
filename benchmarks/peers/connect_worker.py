"""Connect-benchmark worker: opens N mutual-TLS MQTT connections, reports rate, CPU and RSS.

Runs in its own process so its RSS growth per connection is not mixed with the harness.
``variant``: ``elf_async`` uses elf-async's own Connector, as `send` does; ``shared`` is the
same with every client on one certificate and key (``create --identity shared``); ``asyncio``
is a floor for comparison: a bare uvloop TLS connection that sends CONNECT and waits for
CONNACK, no MQTT library. The elf-async code is whatever ``elf_async`` imports as (the harness
puts a baseline revision first on PYTHONPATH to measure before and after in one run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.peers._common import PeerConfig, emit, load_config, self_cpu, wait_line_async


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Connack(asyncio.Protocol):
    """Sends CONNECT on connection, resolves when CONNACK (0x20) arrives."""

    def __init__(self, client_id: str, done: asyncio.Future[None]) -> None:
        self.client_id = client_id.encode()
        self.done = done
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        cid = self.client_id
        variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        writer: Any = transport  # uvloop's SSL transport is not an asyncio.WriteTransport subclass
        writer.write(bytes([0x10, len(variable)]) + variable)

    def data_received(self, data: bytes) -> None:
        if data[:1] == b"\x20" and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before CONNACK"))


async def open_asyncio(config: PeerConfig, keep: list[Any], gate: asyncio.Semaphore) -> int:
    loop = asyncio.get_running_loop()

    async def one(index: int) -> bool:
        spec = config.clients[index]
        async with gate:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.ca_file)
            context.load_cert_chain(spec.cert, spec.key)
            done: asyncio.Future[None] = loop.create_future()
            try:
                transport, _ = await loop.create_connection(
                    lambda: Connack(spec.id, done), config.host, config.port, ssl=context
                )
                await asyncio.wait_for(done, 30)
            except (OSError, TimeoutError, ssl.SSLError):
                return False
            keep.append(transport)
            return True

    results = await asyncio.gather(*(one(i) for i in range(len(config.clients))))
    return sum(results)


async def open_elf_async(config: PeerConfig, keep: list[Any]) -> tuple[int, dict[str, Any]]:
    import dataclasses

    import elf_async
    from elf_async.dataplane.connections import Connector, Endpoint, Identity
    from elf_async.dataplane.mqtt import ConnectFailed

    # A baseline from before shared identities has no `shared` field: it loads the one
    # certificate per connect, as it did then.
    shared = {"shared": True} if config.variant == "shared" else {}
    if "shared" not in {f.name for f in dataclasses.fields(Identity)}:
        shared = {}

    endpoint = Endpoint(config.host, config.port, Path(config.ca_file).read_text())  # noqa: ASYNC240 - before timing
    rate = float(config.extra.get("connect_rate", 10_000))
    connector = Connector(endpoint, rate=rate, timeout=60.0, retries=0, max_inflight=100)

    async def one(index: int) -> bool:
        spec = config.clients[index]
        try:
            keep.append(
                await connector.open(
                    Identity(spec.id, index, Path(spec.key), Path(spec.cert), **shared)
                )
            )
        except ConnectFailed:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(len(config.clients))))
    detail = {
        "connect_ms_p50": connector.connect_time.percentile_ms(50),
        "connect_ms_p99": connector.connect_time.percentile_ms(99),
        "errors": dict(connector.errors),
        # What the new connect path counts (absent from a baseline that had no such counters).
        **{
            name: value
            for name in ("resumed", "resolutions")
            if isinstance(value := getattr(connector, name, None), int)
        },
    }
    detail["elf_async_from"] = str(Path(elf_async.__file__).parent)
    tls = getattr(connector, "tls", None)
    if tls is not None:
        detail["contexts_built"] = tls.contexts_built
    return sum(results), detail


async def run() -> None:
    config = load_config()
    variant = config.variant or "elf_async"
    keep: list[Any] = []
    emit("READY", {"rss_kb": rss_kb(), "pid": os.getpid()})
    if await wait_line_async() != "GO":
        return
    cpu0 = self_cpu()
    rss0 = rss_kb()
    start = time.monotonic()
    detail: dict[str, Any] = {}
    if variant == "asyncio":
        connected = await open_asyncio(config, keep, asyncio.Semaphore(config.connect_concurrency))
    else:
        connected, detail = await open_elf_async(config, keep)
    elapsed = time.monotonic() - start
    cpu = self_cpu() - cpu0
    await asyncio.sleep(2.0)  # idle: what a connection costs while it just keeps alive
    rss1 = rss_kb()
    emit(
        "RESULT",
        {
            "connected": connected,
            "failed": len(config.clients) - connected,
            "seconds": elapsed,
            "connects_per_s": connected / elapsed if elapsed else None,
            "cpu_s": cpu,
            "cpu_ms_per_connect": 1000 * cpu / connected if connected else None,
            "rss_kb_before": rss0,
            "rss_kb_after": rss1,
            "rss_kb_per_connection": (rss1 - rss0) / connected if connected else None,
            **detail,
        },
    )
    await wait_line_async()
    for item in keep:
        close = getattr(item, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                with contextlib.suppress(TimeoutError, OSError):
                    await asyncio.wait_for(result, 5)


if __name__ == "__main__":
    uvloop.run(run())
