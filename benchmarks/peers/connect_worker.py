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
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.peers._common import PeerConfig, emit, load_config, self_cpu, wait_line_async
from elf_async.dataplane.takeover import Takeover


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


async def open_elf_async(
    config: PeerConfig, keep: list[Any], held: tuple[Any, list[Any]]
) -> tuple[int, dict[str, Any]]:
    """Every connection through elf-async's Connector, each taken over the moment it is open,
    as `send` does (`Publisher.attach`): from then on its socket is read in the hot path's
    epoll set and its keep-alive runs in the takeover's pass instead of aiomqtt's task."""
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
    keepalive = int(config.extra.get("keepalive", 60))
    connector = Connector(
        endpoint, rate=rate, timeout=120.0, retries=0, max_inflight=100, keepalive=keepalive
    )
    takeover, wires = held

    async def one(index: int) -> bool:
        spec = config.clients[index]
        try:
            link = await connector.open(
                Identity(spec.id, index, Path(spec.key), Path(spec.cert), **shared)
            )
        except ConnectFailed:
            return False
        keep.append(link)
        wires.append(
            takeover.install(
                link.client,
                "idle",
                1,
                on_ack=lambda mid: None,
                on_sent=lambda token, mid, size: None,
                on_drained=lambda: None,
            )
        )
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


async def soak(seconds: float, keep: list[Any]) -> dict[str, Any]:
    """Idle for `seconds` with every connection taken over (PINGREQ/PINGRESP only): the
    process's CPU over it, and how many connections are still open at the end."""
    cpu0 = self_cpu()
    start = time.monotonic()
    await asyncio.sleep(seconds)
    cpu = self_cpu() - cpu0
    wall = time.monotonic() - start
    return {
        "idle_s": round(wall, 3),
        "idle_cpu_s": round(cpu, 3),
        "idle_cpu_pct_of_one_core": round(100 * cpu / wall, 2),
        "open_after_idle": sum(1 for link in keep if not link.lost.done()),
        "lost": dict(Counter(link.lost.result() for link in keep if link.lost.done())),
    }


async def soak_ab(seconds: float, keep: list[Any], held: tuple[Any, list[Any]]) -> dict[str, Any]:
    """The idle soak in four alternated windows on the same connections: the keep-alive pass
    as it is (each connection visited when its keep-alive is due, its PINGREQ written at once),
    then as it was before (every connection's paho timers every second, a PINGREQ through a
    writer callback), twice; each side's CPU over its windows."""
    takeover, wires = held

    async def every_second() -> None:  # the pass before this session, as it was
        while True:
            await asyncio.sleep(1.0)
            for wire in wires:
                if not wire.dead:
                    wire._client.loop_misc()  # noqa: SLF001 - PINGREQ through paho's writer

    sides: dict[str, list[dict[str, Any]]] = {"when_due": [], "every_second": []}
    for side in ("when_due", "every_second", "when_due", "every_second"):
        if side == "when_due":
            sides[side].append(await soak(seconds / 2, keep))
            continue
        takeover._keeper.cancel()  # noqa: SLF001 - research: the pass before, on the same wires
        before = asyncio.create_task(every_second())
        try:
            sides[side].append(await soak(seconds / 2, keep))
        finally:
            before.cancel()
            takeover._keeper = asyncio.create_task(takeover._keep_alive())  # noqa: SLF001
    out: dict[str, Any] = {}
    for side, windows in sides.items():
        cpu = sum(w["idle_cpu_s"] for w in windows)
        wall = sum(w["idle_s"] for w in windows)
        out[f"idle_{side}"] = {
            "idle_s": round(wall, 3),
            "idle_cpu_s": round(cpu, 3),
            "idle_cpu_pct_of_one_core": round(100 * cpu / wall, 2),
            "open_after_idle": windows[-1]["open_after_idle"],
            "lost": windows[-1]["lost"],
        }
    return out


def trim_heap() -> None:
    """glibc's malloc_trim(0): give the heap's free pages back (the handshakes' temporaries,
    freed but kept by malloc's arenas); research only, glibc only."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def traced(connections: int) -> dict[str, Any]:
    """Python allocations still held per connection (tracemalloc, started before the first
    connect), by source line: what the aiomqtt/paho objects and our own cost. OpenSSL's own
    memory is native and not traced: RSS per connection minus this is mostly the TLS state."""
    import tracemalloc

    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    top = [
        {
            "where": f"{s.traceback[0].filename.rsplit('/site-packages/', 1)[-1]}:"
            f"{s.traceback[0].lineno}",
            "bytes_per_connection": round(s.size / connections, 1),
            "blocks_per_connection": round(s.count / connections, 2),
        }
        for s in stats[:25]
    ]
    return {"python_bytes_per_connection": round(total / max(connections, 1), 1), "top": top}


async def run() -> None:
    config = load_config()
    variant = config.variant or "elf_async"
    keep: list[Any] = []
    if config.extra.get("tracemalloc"):
        import tracemalloc

        tracemalloc.start()
    emit("READY", {"rss_kb": rss_kb(), "pid": os.getpid()})
    if await wait_line_async() != "GO":
        return
    cpu0 = self_cpu()
    rss0 = rss_kb()
    start = time.monotonic()
    detail: dict[str, Any] = {}
    held: tuple[Any, list[Any]] | None = None
    if variant == "asyncio":
        connected = await open_asyncio(config, keep, asyncio.Semaphore(config.connect_concurrency))
    else:
        held = (Takeover(), [])
        connected, detail = await open_elf_async(config, keep, held)
    elapsed = time.monotonic() - start
    cpu = self_cpu() - cpu0
    await asyncio.sleep(2.0)  # idle: what a connection costs while it just keeps alive
    rss1 = rss_kb()
    if held is not None:  # links: were any lost while the others connected?
        detail["open_after_connect"] = sum(1 for link in keep if not link.lost.done())
    if config.extra.get("trim"):
        detail["rss_kb_per_connection_untrimmed"] = (rss1 - rss0) / connected if connected else None
        trim_heap()
        await asyncio.sleep(1.0)
        rss1 = rss_kb()
    idle_s = float(config.extra.get("idle_s", 0))
    if idle_s > 0 and held is not None:
        detail |= await soak_ab(idle_s, keep, held)
    if config.extra.get("tracemalloc"):
        detail["tracemalloc"] = traced(connected)
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
