"""Peer: the floor of a Python publisher, no MQTT library at all.

Not a client anyone would ship: raw `ssl` sockets, MQTT 3.1.1 framed by hand, one epoll loop
and a heap of due times, no histograms, no per-message bookkeeping beyond the load model's.
What it spends per message is what Python's `ssl` (OpenSSL) and the kernel charge for one TLS
write and, at QoS 1, one PUBACK read on a socket of its own: the least any Python client can
spend under the same load model on this machine, and so the yardstick for a paced goal.
"""

from __future__ import annotations

import heapq
import os
import selectors
import socket
import ssl
import sys
import time

from benchmarks.peers._common import (
    OpenLoop,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    set_nodelay,
    tls_context,
    wait_line,
)

KEEPALIVE = 60
BURST = 64  # messages one client writes per pass (flat out) before the next client's turn
PUBACK_SIZE = 4  # 0x40 0x02 and the packet id: the only packet the broker sends us here


def remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        byte, size = size % 128, size // 128
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str) -> bytes:
    body = utf8("MQTT") + bytes([4, 0x02]) + KEEPALIVE.to_bytes(2, "big") + utf8(client_id)
    return b"\x10" + remaining_length(len(body)) + body


class Client:
    """One connection: its socket, its publish head, what it wrote and what was acknowledged."""

    __slots__ = ("acked_bytes", "head", "mid", "pending", "pending_messages", "schedule", "sock")

    def __init__(self, sock: ssl.SSLSocket, head: bytes, schedule: OpenLoop) -> None:
        self.sock = sock
        self.head = head
        self.mid = 0
        self.pending = b""  # bytes OpenSSL refused (would block): written again, unchanged
        self.pending_messages = 0  # messages in `pending`: not in the kernel yet
        self.acked_bytes = 0
        self.schedule = schedule


def connect(config: PeerConfig, index: int) -> ssl.SSLSocket | None:
    spec = config.clients[index]
    try:
        raw = socket.create_connection((config.host, config.port), timeout=10)
        set_nodelay(raw)
        sock = tls_context(config, spec).wrap_socket(raw, server_hostname=config.host)
        sock.sendall(connect_packet(spec.id))
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                return None
            connack += chunk
    except OSError:
        return None
    if connack[0] != 0x20 or connack[3] != 0:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def main() -> None:
    config = load_config()
    socks = [connect(config, i) for i in range(len(config.clients))]
    live = [(i, s) for i, s in enumerate(socks) if s is not None]
    emit("READY", {"connected": len(live), "failed": len(socks) - len(live)})
    if wait_line() != "GO":
        return
    cpu0 = self_cpu()
    times0 = os.times()
    body = payload(config.payload_size)
    qos, limit, paced = config.qos, config.inflight, config.paced
    start = time.monotonic()
    end = start + config.seconds
    schedules = OpenLoop.fleet(start, config.rate, len(live))
    clients: list[Client] = []
    for (index, sock), schedule in zip(live, schedules, strict=True):
        topic = utf8(config.topic(config.clients[index].id))
        size = len(topic) + (2 if qos else 0) + len(body)
        head = bytes([0x30 | (qos << 1)]) + remaining_length(size) + topic
        clients.append(Client(sock, head, schedule))
    selector = selectors.DefaultSelector()
    for number, client in enumerate(clients):
        selector.register(client.sock, selectors.EVENT_READ, number)
    due = [(c.schedule.base, n) for n, c in enumerate(clients)]
    heapq.heapify(due)
    waiting: list[int] = []  # clients whose window was full or socket busy: tried every pass
    lags: list[float] = []

    def write(client: Client, data: bytes, messages: int) -> bool:
        """One send of `data`; what OpenSSL refuses is kept to be written again, unchanged."""
        try:
            written = client.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            client.pending, client.pending_messages = data, messages
            return False
        if written < len(data):  # not with OpenSSL's default (no partial writes), but cheap
            client.pending, client.pending_messages = data[written:], messages
            return False
        client.pending, client.pending_messages = b"", 0
        return True

    def publish(number: int, now: float) -> bool:
        """Send what `number` owes (as its window allows); False: it could not send all."""
        client = clients[number]
        if client.pending and not write(client, client.pending, client.pending_messages):
            return False
        schedule = client.schedule
        count = schedule.owed(now)
        if qos:
            count = min(count, limit - (schedule.sent - client.acked_bytes // PUBACK_SIZE))
        count = min(count, BURST)
        if count <= 0:
            return schedule.owed(now) <= 0
        if paced:
            lags.extend(schedule.lags(now, count))
        if qos:
            parts = []
            for _ in range(count):
                client.mid = client.mid % 65535 + 1
                parts.append(client.head + client.mid.to_bytes(2, "big") + body)
            data = b"".join(parts)
        else:
            data = (client.head + body) * count
        schedule.sent += count
        return write(client, data, count) and schedule.owed(now) <= 0

    while True:
        now = time.monotonic()
        if now >= end:
            break
        retry, waiting = waiting, []
        for number in retry:
            if publish(number, now):
                heapq.heappush(due, (clients[number].schedule.next_due(), number))
            else:
                waiting.append(number)
        ready = []  # popped first, pushed after: a due time rounded onto `now` is not a spin
        while due and due[0][0] <= now:
            ready.append(heapq.heappop(due)[1])
        for number in ready:
            if publish(number, now):
                heapq.heappush(due, (clients[number].schedule.next_due(), number))
            else:
                waiting.append(number)
        if waiting:
            timeout = 0.001
        else:
            timeout = max(0.0, min(due[0][0] if due else end, end) - time.monotonic())
        for key, _events in selector.select(timeout):
            client = clients[key.data]
            try:
                while True:
                    data = client.sock.recv(65536)
                    if not data:
                        break
                    client.acked_bytes += len(data)
                    if not client.sock.pending():
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
    publish_end = time.monotonic()
    cpu_at_stop = self_cpu() - cpu0
    times1 = os.times()
    sent = sum(c.schedule.sent for c in clients)
    unwritten = sum(c.pending_messages for c in clients)
    drain_end = publish_end + config.drain_seconds
    while time.monotonic() < drain_end:
        for client in clients:
            if client.pending:
                write(client, client.pending, client.pending_messages)
        acked = sum(c.acked_bytes for c in clients) // PUBACK_SIZE
        if not any(c.pending for c in clients) and (qos == 0 or acked >= sent):
            break
        for key, _events in selector.select(0.01):
            client = clients[key.data]
            try:
                while data := client.sock.recv(65536):
                    client.acked_bytes += len(data)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
    done = time.monotonic()
    acked = sum(c.acked_bytes for c in clients) // PUBACK_SIZE
    emit(
        "RESULT",
        {
            "published": sent - unwritten,
            "sent": sent,
            "acked": acked if qos else sent,
            "publish_seconds": publish_end - start,
            "drain_seconds": done - publish_end,
            "self_cpu": self_cpu() - cpu0,
            "cpu_at_stop": cpu_at_stop,
            "lag_ms": percentiles(lags),
            # Where the floor's CPU goes, GO to the stop: Python and OpenSSL, or the kernel
            # (on loopback the kernel's share includes the broker's receive path).
            "extra": {
                "user_s": round(times1.user - times0.user, 3),
                "system_s": round(times1.system - times0.system, 3),
            },
        },
    )
    wait_line()
    for client in clients:
        client.sock.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
