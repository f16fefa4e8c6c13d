"""What every publisher peer shares: its config, the READY/GO/RESULT handshake, the payload,
the load model.

Each peer runs in its own process so the harness can charge it exactly the CPU it used
(/proc/PID/stat between GO and RESULT) and nothing of the broker, subscriber or harness.
Protocol on stdio: the peer connects its clients and prints ``READY {json}``; the harness
writes ``GO``; the peer publishes for ``seconds``, waits up to ``drain_seconds`` for QoS 1
acknowledgements, prints ``RESULT {json}``, then disconnects when stdin closes or says EXIT.

The load model is the same for every peer (`OpenLoop`): client i's message k is due at
``GO + phase_i + k / rate``; a client behind its schedule sends what is due as fast as its
window (QoS 1: at most `inflight` unacknowledged) and its socket allow. "Flat out" is the same
open loop at a rate no publisher reaches, so each one runs behind and goes as fast as it can.

What a peer reports as ``published`` is what the kernel had taken by the stop (GO +
``seconds``): messages still in a user-space buffer then are not counted in it (they go out
in the drain and are reported as ``sent``, which the harness checks against what the
subscribers and the broker counted).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ClientSpec:
    id: str
    cert: str
    key: str


@dataclass(slots=True)
class PeerConfig:
    host: str
    port: int
    ca_file: str
    clients: list[ClientSpec]
    qos: int = 0
    seconds: float = 5.0
    payload_size: int = 100
    inflight: int = 100
    rate: float = 100_000.0  # messages per second per client, open loop (see OpenLoop)
    paced: bool = False  # False: flat out (the rate is above reach); True: lag is recorded
    topic_prefix: str = "bench"
    connect_concurrency: int = 50
    drain_seconds: float = 10.0
    variant: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def topic(self, client_id: str) -> str:
        return f"{self.topic_prefix}/{client_id}"


def load_config(argv: list[str] | None = None) -> PeerConfig:
    """The harness passes one JSON file path: the same file shape for every peer."""
    path = (argv or sys.argv)[1]
    with open(path) as handle:
        raw = json.load(handle)
    raw["clients"] = [ClientSpec(**c) for c in raw["clients"]]
    return PeerConfig(**raw)


@dataclass(slots=True)
class OpenLoop:
    """One client's schedule: message k is due at ``base + k * interval``, whatever happened
    before (the load model of every peer, as elf-async's own scheduler has it)."""

    base: float  # monotonic instant message 0 is due: GO plus the client's phase
    interval: float
    sent: int = 0  # messages handed to the client library so far

    @classmethod
    def fleet(cls, start: float, rate: float, clients: int) -> list[OpenLoop]:
        """Every client's schedule, first messages spread over the first interval."""
        interval = 1.0 / rate
        return [cls(start + interval * i / clients, interval) for i in range(clients)]

    def owed(self, now: float) -> int:
        """Messages due by `now` and not sent yet."""
        if now < self.base:
            return 0
        return int((now - self.base) / self.interval) + 1 - self.sent

    def next_due(self) -> float:
        return self.base + self.sent * self.interval

    def lags(self, now: float, count: int) -> list[float]:
        """How late the next `count` messages are when sent at `now` (paced runs record them)."""
        due = self.next_due()
        return [now - due - k * self.interval for k in range(count)]


def payload(size: int) -> bytes:
    """A fixed JSON-ish payload of exactly `size` bytes: same bytes for every peer."""
    head = b'{"msg": "IoT ELF Hello", "pad": "'
    tail = b'"}'
    pad = max(0, size - len(head) - len(tail))
    body = head + b"x" * pad + tail
    return body[:size] if len(body) > size else body


def tls_context(config: PeerConfig, spec: ClientSpec) -> ssl.SSLContext:
    """Mutual TLS as for every peer: the broker verified against the CA (and its name), the
    client's own certificate presented."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.ca_file)
    context.load_cert_chain(spec.cert, spec.key)
    return context


# Every peer turns Nagle off on its sockets, as elf-async does: a load generator writes
# when a message is due, and must not wait for the ACK of the previous segment.
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay(sock: socket.socket) -> None:
    sock.setsockopt(*NODELAY)


def emit(tag: str, data: dict[str, Any]) -> None:
    sys.stdout.write(f"{tag} {json.dumps(data)}\n")
    sys.stdout.flush()


def wait_line() -> str:
    """Block until the harness writes a line (GO or EXIT); EOF counts as EXIT."""
    line = sys.stdin.readline()
    return line.strip() or "EXIT"


async def wait_line_async() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, wait_line)


def percentiles(
    values: list[float], points: tuple[float, ...] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """Milliseconds at the given percentiles (nearest rank), plus max."""
    if not values:
        return {}
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        out[f"p{p:g}".replace(".", "")] = round(ordered[rank] * 1000, 3)
    out["max"] = round(ordered[-1] * 1000, 3)
    return out


def self_cpu() -> float:
    """User+system CPU seconds of this process (all threads): a cross-check for the harness."""
    times = __import__("os").times()
    return float(times.user + times.system)


def now() -> float:
    return time.monotonic()
