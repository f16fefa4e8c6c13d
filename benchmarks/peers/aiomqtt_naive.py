"""Peer (2): aiomqtt 2.x as documented: one task per client awaiting every `publish()`, uvloop.

This is the "obvious" asyncio style the seed used; at QoS 1 each client has one message in
flight because each await waits for the PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiomqtt
import uvloop

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
        interval = None if config.rate is None else 1.0 / config.rate
        lags: list[float] = []
        sent = [0] * len(clients)

        async def publisher(index: int, client: aiomqtt.Client) -> None:
            topic = config.topic(client.identifier)
            due = start + (index / len(clients)) * (interval or 0)
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                if interval is not None:
                    if due > now:
                        await asyncio.sleep(due - now)
                        continue
                    lags.append(now - due)
                    due += interval
                await client.publish(topic, body, qos=config.qos)
                sent[index] += 1

        await asyncio.gather(*(publisher(i, c) for i, c in enumerate(clients)))
        publish_end = time.monotonic()
        published = sum(sent)
        emit(
            "RESULT",
            {
                "published": published,
                "acked": published,  # every await returned: written (QoS 0) or PUBACKed (QoS 1)
                "publish_seconds": publish_end - start,
                "drain_seconds": 0.0,
                "self_cpu": self_cpu() - cpu0,
                "lag_ms": percentiles(lags),
            },
        )
        await wait_line_async()


if __name__ == "__main__":
    uvloop.run(run())
