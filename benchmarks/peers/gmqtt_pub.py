"""Peer (3): gmqtt (pure asyncio protocol, writes straight into the transport), uvloop.

Benchmark-only dependency (the `bench` extra): the fastest Python MQTT client we know of.
Its idiomatic fast form: one task per client publishes everything that is due in one batch
(up to `BATCH`, and within the QoS 1 window), then yields once; when the transport's write
buffer passes its high-water mark, the task waits for the protocol's resume_writing (the
stream back-pressure of asyncio, `drain`) instead of polling a timer. QoS 1 acknowledgements
are counted through gmqtt's own in-flight store, which it empties on PUBACK; each client keeps
at most `inflight` unacknowledged messages, as AWS requires.
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
    OpenLoop,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    set_nodelay,
    tls_context,
    wait_line_async,
)

WRITE_HIGH_WATER = 64 * 1024  # the transport pauses the protocol above this many bytes
BATCH = 256  # messages one task publishes before it yields to the other clients


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
        transport = client._connection._transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        set_nodelay(transport.get_extra_info("socket"))  # asyncio sets it too: made explicit
        return client, storage


def packet_size(topic: str, body: bytes, qos: int) -> int:
    """Bytes of one PUBLISH (fixed header, topic, packet id at QoS 1, payload)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + len(body)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining


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
    qos, limit, paced = config.qos, config.inflight, config.paced
    start = time.monotonic()
    end = start + config.seconds
    schedules = OpenLoop.fleet(start, config.rate, len(pairs))
    lags: list[float] = []
    loop = asyncio.get_running_loop()

    async def publisher(client: Client, storage: CountingStorage, schedule: OpenLoop) -> None:
        topic = config.topic(client._client_id)
        connection: Any = client._connection
        protocol = connection._protocol
        while True:
            now = time.monotonic()
            if now >= end:
                return
            count = min(schedule.owed(now), BATCH)
            if count <= 0:
                await asyncio.sleep(min(schedule.next_due(), end) - now)
                continue
            if qos:
                count = min(count, limit - len(storage))
                if count <= 0:
                    storage.waiter = loop.create_future()
                    await storage.waiter
                    storage.waiter = None
                    continue
            if protocol._paused:  # the transport passed WRITE_HIGH_WATER: pause_writing()
                await protocol._drain_helper()  # what StreamWriter.drain() awaits
                continue
            if paced:
                lags.extend(schedule.lags(now, count))
            for _ in range(count):
                client.publish(topic, body, qos=qos)
            schedule.sent += count
            await asyncio.sleep(0)  # one yield per batch: the loop writes, reads PUBACKs

    await asyncio.gather(*(publisher(c, s, o) for (c, s), o in zip(pairs, schedules, strict=True)))
    publish_end = time.monotonic()
    cpu_at_stop = self_cpu() - cpu0
    sent = sum(o.sent for o in schedules)
    # Published = in the kernel by the stop: what is still in a transport's buffer is not.
    size = packet_size(config.topic(config.clients[0].id), body, qos) if pairs else 1
    buffered = sum(-(-c._connection._transport.get_write_buffer_size() // size) for c, _ in pairs)
    drain_end = publish_end + config.drain_seconds
    while qos and time.monotonic() < drain_end and sum(s.acked for _, s in pairs) < sent:  # noqa: ASYNC110 - a poll of many counters
        await asyncio.sleep(0.01)
    done = time.monotonic()
    emit(
        "RESULT",
        {
            "published": sent if paced else sent - buffered,
            "sent": sent,
            "acked": sum(s.acked for _, s in pairs) if qos else sent,
            "publish_seconds": publish_end - start,
            "drain_seconds": done - publish_end,
            "self_cpu": self_cpu() - cpu0,
            "cpu_at_stop": cpu_at_stop,
            "lag_ms": percentiles(lags),
        },
    )
    await wait_line_async()
    for client, _ in pairs:
        await client.disconnect()


if __name__ == "__main__":
    uvloop.run(run())
