"""Peer (1): bare paho-mqtt, every client driven by one hand-written epoll loop, one thread.

No asyncio at all: paho writes each packet inline from publish(); the loop publishes what is
due on every client that has room (QoS 1 window, a socket that took everything so far), then
waits in epoll for PUBACKs, writable sockets or the next due message. It polls without
blocking only right after a pass that published something, never in an idle spin.
"""

from __future__ import annotations

import selectors
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.peers._common import (
    OpenLoop,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    set_nodelay,
    wait_line,
)

BURST = 64  # messages one client publishes per pass before the next client's turn


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
            sock = client.socket()
            assert sock is not None
            set_nodelay(sock)
            # paho's wake-up socket pair only serves its own threaded loop; left in place,
            # every publish() sends a byte into it.
            client._reset_sockets(sockpair_only=True)
            # Wait for CONNACK before the next client. Not with client.loop(): it uses
            # select(), which fails once paho's fds pass 1024.
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
    qos, limit, paced = config.qos, config.inflight, config.paced
    start = time.monotonic()
    end = start + config.seconds
    schedules = OpenLoop.fleet(start, config.rate, len(clients))
    lags: list[float] = []
    next_misc = start + 1.0

    def watch_writes(index: int, client: mqtt.Client) -> None:
        """Wait for the socket to be writable exactly while paho has bytes queued."""
        wants = client.want_write()
        if wants != want_write[index]:
            want_write[index] = wants
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if wants else 0)
            selector.modify(client.socket(), mask, index)

    def poll(timeout: float) -> None:
        for key, events in selector.select(timeout):
            index = key.data
            client = clients[index]
            if events & selectors.EVENT_READ:
                client.loop_read()
            if events & selectors.EVENT_WRITE:
                client.loop_write()
            watch_writes(index, client)

    while True:
        now = time.monotonic()
        if now >= end:
            break
        published = False
        wake = end
        for index, client in enumerate(clients):
            if want_write[index]:
                continue  # the socket is full: epoll says when it drains
            schedule = schedules[index]
            count = schedule.owed(now)
            if count <= 0:
                wake = min(wake, schedule.next_due())
                continue
            if qos:
                count = min(count, limit - (schedule.sent - counters[index].acked))
            count = min(count, BURST)
            if count <= 0:
                continue  # the window is full: a PUBACK (epoll) frees it
            if paced:
                lags.extend(schedule.lags(now, count))
            topic = topics[index]
            for _ in range(count):
                client.publish(topic, body, qos)
                schedule.sent += 1
                if client.want_write():
                    break  # the socket took only part of it
            published = True
            watch_writes(index, client)
        if now >= next_misc:
            for client in clients:
                client.loop_misc()
            next_misc = now + 1.0
        poll(0 if published else max(0.0, min(wake, next_misc) - time.monotonic()))
    publish_end = time.monotonic()
    cpu_at_stop = self_cpu() - cpu0
    sent = sum(s.sent for s in schedules)
    # Published = in the kernel by the stop: a packet paho still holds (even in part) is not.
    queued = sum(len(c._out_packet) for c in clients)
    # Flush what is still queued, then wait for the outstanding acknowledgements.
    drain_end = publish_end + config.drain_seconds
    while time.monotonic() < drain_end:
        pending_writes = any(c.want_write() for c in clients)
        if not pending_writes and (qos == 0 or sum(c.acked for c in counters) >= sent):
            break
        poll(0.01)
    done = time.monotonic()
    acked = sum(c.acked for c in counters)
    emit(
        "RESULT",
        {
            "published": sent if paced else sent - queued,
            "sent": sent,
            "acked": acked if qos else sent,
            "publish_seconds": publish_end - start,
            "drain_seconds": done - publish_end,
            "self_cpu": self_cpu() - cpu0,
            "cpu_at_stop": cpu_at_stop,
            "lag_ms": percentiles(lags),
        },
    )
    wait_line()
    for client in clients:
        client.disconnect()
    sys.exit(0)


if __name__ == "__main__":
    main()
