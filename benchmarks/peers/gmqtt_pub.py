"""Peer (3): gmqtt (pure asyncio protocol, writes straight into the transport), uvloop.

Benchmark-only dependency (the `bench` extra): the fastest Python MQTT client we know of.
QoS 1 acknowledgements are counted through gmqtt's own in-flight store, which it empties on
PUBACK; each client keeps at most `inflight` unacknowledged messages, as AWS requires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import uvloop
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.storage import PersistentStorage

from benchmarks.peers._common import (
    ClientSpec,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    tls_context,
    wait_line_async,
)

WRITE_HIGH_WATER = 64 * 1024


class CountingStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, plus an ack counter and a wake-up for a blocked publisher."""

    def __init__(self) -> None:
        super().__init__()
        self.acked = 0
        self.waiter: asyncio.Future[None] | None = None

    def remove_message_by_mid(self, mid: int) -> None:
        if mid in self._messages:
            self.acked += 1
        super().remove_message_by_mid(mid)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:  # gmqtt does `persistent_storage or PersistentStorage()`
        return True


async def connect(
    config: PeerConfig, spec: ClientSpec, gate: asyncio.Semaphore
) -> tuple[Client, CountingStorage] | None:
    async with gate:
        storage = CountingStorage()
        client = Client(spec.id, persistent_storage=storage)
        client.set_config({"reconnect_retries": 0})
        try:
            await asyncio.wait_for(
                client.connect(
                    config.host,
                    config.port,
                    ssl=tls_context(config, spec),
                    keepalive=60,
                    version=MQTTv311,
                ),
                30,
            )
        except (OSError, TimeoutError):
            return None
        return client, storage


async def run() -> None:
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    config = load_config()
    gate = asyncio.Semaphore(config.connect_concurrency)
    results = await asyncio.gather(*(connect(config, s, gate) for s in config.clients))
    pairs = [r for r in results if r is not None]
    emit("READY", {"connected": len(pairs), "failed": len(results) - len(pairs)})
    if await wait_line_async() != "GO":
        return
    cpu0 = self_cpu()
    body = payload(config.payload_size)
    qos = config.qos
    limit = config.inflight
    start = time.monotonic()
    end = start + config.seconds
    interval = None if config.rate is None else 1.0 / config.rate
    lags: list[float] = []
    sent = [0] * len(pairs)
    loop = asyncio.get_running_loop()

    async def publisher(index: int, client: Client, storage: CountingStorage) -> None:
        topic = config.topic(client._client_id)
        transport: Any = client._connection._transport
        due = start + (index / len(pairs)) * (interval or 0)
        count = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if interval is not None:
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                lags.append(now - due)
                due += interval
            if qos and len(storage) >= limit:
                storage.waiter = loop.create_future()
                await storage.waiter
                storage.waiter = None
                continue
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await asyncio.sleep(0.001)
                continue
            client.publish(topic, body, qos=qos)
            count += 1
            if count % 8 == 0 or interval is not None:
                await asyncio.sleep(0)  # let the loop flush and read, as any asyncio peer must
        sent[index] = count

    await asyncio.gather(*(publisher(i, c, s) for i, (c, s) in enumerate(pairs)))
    publish_end = time.monotonic()
    published = sum(sent)
    drain_end = publish_end + config.drain_seconds
    while qos and time.monotonic() < drain_end and sum(s.acked for _, s in pairs) < published:  # noqa: ASYNC110 - a poll of many counters
        await asyncio.sleep(0.01)
    done = time.monotonic()
    emit(
        "RESULT",
        {
            "published": published,
            "acked": sum(s.acked for _, s in pairs) if qos else published,
            "publish_seconds": publish_end - start,
            "drain_seconds": done - publish_end,
            "self_cpu": self_cpu() - cpu0,
            "lag_ms": percentiles(lags),
        },
    )
    await wait_line_async()
    for client, _ in pairs:
        await client.disconnect()


if __name__ == "__main__":
    uvloop.run(run())
