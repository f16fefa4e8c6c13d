"""Peer (2): aiomqtt 2.x as documented: one task per client awaiting every `publish()`, uvloop.

This is the "obvious" asyncio style the seed used; at QoS 1 each client has one message in
flight because each await waits for the PUBACK. A message counts once its await returned
(QoS 0: paho wrote it; QoS 1: PUBACKed) before the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
import uvloop

from benchmarks.peers._common import (
    NODELAY,
    ClientSpec,
    OpenLoop,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    tls_context,
    wait_line_async,
)


async def connect(
    config: PeerConfig, spec: ClientSpec, gate: asyncio.Semaphore, stack: contextlib.AsyncExitStack
) -> aiomqtt.Client | None:
    async with gate:
        client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=spec.id,
            tls_context=tls_context(config, spec),
            keepalive=60,
            timeout=30,
            socket_options=[NODELAY],
        )
        try:
            return await stack.enter_async_context(client)
        except aiomqtt.MqttError:
            return None


async def run() -> None:
    config = load_config()
    async with contextlib.AsyncExitStack() as stack:
        gate = asyncio.Semaphore(config.connect_concurrency)
        results = await asyncio.gather(*(connect(config, s, gate, stack) for s in config.clients))
        clients = [c for c in results if c is not None]
        emit("READY", {"connected": len(clients), "failed": len(results) - len(clients)})
        if await wait_line_async() != "GO":
            return
        cpu0 = self_cpu()
        body = payload(config.payload_size)
        start = time.monotonic()
        end = start + config.seconds
        schedules = OpenLoop.fleet(start, config.rate, len(clients))
        lags: list[float] = []
        done = [0] * len(clients)  # awaits that returned before the stop

        async def publisher(index: int, client: aiomqtt.Client, schedule: OpenLoop) -> None:
            topic = config.topic(client.identifier)
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                if schedule.owed(now) <= 0:
                    await asyncio.sleep(min(schedule.next_due(), end) - now)
                    continue
                if config.paced:
                    lags.extend(schedule.lags(now, 1))
                schedule.sent += 1
                await client.publish(topic, body, qos=config.qos)
                if time.monotonic() <= end:
                    done[index] += 1

        await asyncio.gather(
            *(publisher(i, c, s) for i, (c, s) in enumerate(zip(clients, schedules, strict=True)))
        )
        publish_end = time.monotonic()
        cpu_at_stop = self_cpu() - cpu0
        sent = sum(s.sent for s in schedules)  # every await returned by now
        emit(
            "RESULT",
            {
                "published": sent if config.paced else sum(done),
                "sent": sent,
                "acked": sent,  # every await returned: written (QoS 0) or PUBACKed (QoS 1)
                # Flat out: what returned by the stop, over the span up to it.
                "publish_seconds": (publish_end if config.paced else end) - start,
                "drain_seconds": 0.0,
                "self_cpu": self_cpu() - cpu0,
                "cpu_at_stop": cpu_at_stop,
                "lag_ms": percentiles(lags),
            },
        )
        await wait_line_async()


if __name__ == "__main__":
    uvloop.run(run())
