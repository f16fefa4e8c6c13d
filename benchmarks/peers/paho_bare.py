"""Peer (1): bare paho-mqtt, every client driven by one hand-written epoll loop, one thread.

No asyncio at all: paho writes each packet inline from publish() and we only poll the sockets
for reads (PUBACKs) and for writes when a socket's buffer was full.
"""

from __future__ import annotations

import selectors
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.peers._common import (
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    wait_line,
)


class Counter:
    """Per-client acknowledgement count, bumped by paho's on_publish (QoS 1: on PUBACK)."""

    __slots__ = ("acked",)

    def __init__(self) -> None:
        self.acked = 0


def connect_all(config: PeerConfig) -> tuple[list[mqtt.Client], list[Counter], int]:
    clients: list[mqtt.Client] = []
    counters: list[Counter] = []
    failed = 0
    for spec in config.clients:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=spec.id,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set(ca_certs=config.ca_file, certfile=spec.cert, keyfile=spec.key)
        client.max_inflight_messages_set(config.inflight)
        counter = Counter()

        def on_publish(
            _c: Any, _u: Any, _mid: int, _rc: Any, _p: Any, counter: Counter = counter
        ) -> None:
            counter.acked += 1

        client.on_publish = on_publish
        try:
            client.connect(config.host, config.port, keepalive=60)
            # Wait for CONNACK before the next client. Not with client.loop(): it uses
            # select(), which fails once paho's 3 fds per client pass 1024 (~340 clients).
            sock = client.socket()
            assert sock is not None
            with selectors.DefaultSelector() as waiter:
                waiter.register(sock, selectors.EVENT_READ)
                deadline = time.monotonic() + 10
                while not client.is_connected() and time.monotonic() < deadline:
                    if client.want_write():
                        client.loop_write()
                    if waiter.select(0.05):
                        client.loop_read()
        except OSError:
            failed += 1
            continue
        if not client.is_connected():
            failed += 1
            continue
        clients.append(client)
        counters.append(counter)
    return clients, counters, failed


def main() -> None:
    config = load_config()
    clients, counters, failed = connect_all(config)
    emit("READY", {"connected": len(clients), "failed": failed})
    if wait_line() != "GO":
        return
    cpu0 = self_cpu()
    body = payload(config.payload_size)
    topics = [config.topic(c._client_id.decode()) for c in clients]
    selector = selectors.DefaultSelector()
    for index, client in enumerate(clients):
        sock = client.socket()
        assert sock is not None
        selector.register(sock, selectors.EVENT_READ, index)
    want_write = [False] * len(clients)
    sent = [0] * len(clients)
    qos = config.qos
    limit = config.inflight
    start = time.monotonic()
    end = start + config.seconds
    interval = None if config.rate is None else 1.0 / config.rate
    lags: list[float] = []
    next_due = [start + (i / len(clients)) * (interval or 0) for i in range(len(clients))]
    last_misc = start

    def poll(timeout: float) -> None:
        for key, events in selector.select(timeout):
            index = key.data
            client = clients[index]
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE:
                client.loop_write()
            wants = client.want_write()
            if wants != want_write[index]:
                want_write[index] = wants
                mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
                selector.modify(key.fileobj, mask, index)

    while True:
        now = time.monotonic()
        if now >= end:
            break
        for index, client in enumerate(clients):
            if want_write[index] or client.want_write():
                continue
            if qos and sent[index] - counters[index].acked >= limit:
                continue
            if interval is not None:
                due = next_due[index]
                if due > now:
                    continue
                lags.append(now - due)
                next_due[index] = due + interval
            client.publish(topics[index], body, qos)
            sent[index] += 1
        poll(0)
        if now - last_misc >= 1:
            for client in clients:
                client.loop_misc()
            last_misc = now
    publish_end = time.monotonic()
    published = sum(sent)
    # Flush what is still queued, then wait for the outstanding acknowledgements.
    drain_end = publish_end + config.drain_seconds
    while time.monotonic() < drain_end:
        pending_writes = any(c.want_write() for c in clients)
        acked = sum(c.acked for c in counters)
        if not pending_writes and (qos == 0 or acked >= published):
            break
        for client in clients:
            if client.want_write():
                client.loop_write()
        poll(0.01)
    done = time.monotonic()
    acked = sum(c.acked for c in counters)
    emit(
        "RESULT",
        {
            "published": published,
            "acked": acked if qos else published,
            "publish_seconds": publish_end - start,
            "drain_seconds": done - publish_end,
            "self_cpu": self_cpu() - cpu0,
            "lag_ms": percentiles(lags),
        },
    )
    wait_line()
    for client in clients:
        client.disconnect()
    sys.exit(0)


if __name__ == "__main__":
    main()
