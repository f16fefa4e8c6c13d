"""The Wire on a real TLS socket pair: framing, a write the socket refuses, PUBACKs in bulk.

The peer is a plain blocking TLS socket in this process: it reads only when told, so a batch
larger than the socket buffers really blocks the Wire's non-blocking write.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.mqtt import FixtureCA

from elf_async.dataplane.mqtt import ClientTls, connect
from elf_async.dataplane.mqtt5 import remaining_length
from elf_async.dataplane.takeover import Takeover, Wire
from elf_async.local.mosquitto import Mosquitto


@dataclass
class Pair:
    """A paho client whose socket is one end of a TLS pair; `peer` is the other end."""

    client: paho.Client
    peer: ssl.SSLSocket
    disconnects: list[Any] = field(default_factory=list)

    def wait_writable(self) -> None:
        sock = self.client._sock
        assert sock is not None
        _, writable, _ = select.select([], [sock], [], 10)
        assert writable, "the socket never became writable"

    def wait_readable(self) -> None:
        sock = self.client._sock
        assert isinstance(sock, ssl.SSLSocket)
        if not sock.pending():
            readable, _, _ = select.select([sock], [], [], 10)
            assert readable, "nothing arrived"

    def read_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.peer.recv(size - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return bytes(data)


@pytest.fixture
def pair(test_ca: FixtureCA, tmp_path: Path) -> Iterator[Pair]:
    key_file, cert_file = test_ca.client_cert(tmp_path, "peer")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE  # framing under test, not trust (a client cert)
    near, far = socket.socketpair()
    for sock in (near, far):  # small buffers: a few hundred KB fill them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    wrapped: list[ssl.SSLSocket] = []
    server = threading.Thread(
        target=lambda: wrapped.append(server_context.wrap_socket(far, server_side=True))
    )
    server.start()
    tls = client_context.wrap_socket(near)
    server.join(10)
    tls.setblocking(False)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="wire-test")
    result = Pair(client, wrapped[0])
    client._sock = tls
    client.on_disconnect = lambda *args: result.disconnects.append(args[3])
    try:
        yield result
    finally:
        client._sock_close()
        result.peer.close()


def publish_packet(topic: str, mid: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH as the MQTT 3.1.1 spec frames it (independent of the Wire)."""
    body = len(topic).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + payload
    return bytes([0x32]) + remaining_length(len(body)) + body


async def test_a_refused_write_is_kept_and_finished_when_writable_and_pubacks_read_in_bulk(
    pair: Pair,
) -> None:
    acked: list[int] = []
    sent: list[tuple[str, int, int]] = []
    drained = asyncio.Event()
    wire: Wire[str] = Wire(
        pair.client,
        "elf/t",
        1,
        on_ack=acked.append,
        on_sent=lambda batch, start, stop: sent.append((batch, start, stop)),
        on_drained=drained.set,
    )
    payloads = [bytes([65 + i % 26]) * 100_000 for i in range(20)]  # 2 MB in one batch
    for mid, payload in enumerate(payloads, start=1):
        wire.publish(payload, mid)
    wire.send("batch")
    assert wire.busy, "2 MB went into 32 KB socket buffers without blocking"
    assert sent == []  # not one of the 100 KB messages is in the kernel yet
    assert wire.unsent == ("batch", 0)
    assert pair.client._registered_write  # the Wire's writer is on the loop

    expected = b"".join(publish_packet("elf/t", m, p) for m, p in enumerate(payloads, start=1))
    reader = threading.Thread(target=lambda: received.append(pair.read_exactly(len(expected))))
    received: list[bytes] = []
    reader.start()
    await asyncio.wait_for(drained.wait(), 10)  # the loop's writer callback finished it
    await asyncio.to_thread(reader.join, 10)
    assert received == [expected]
    # Reported as they got into the kernel, each message once, in order.
    assert [batch for batch, _, _ in sent] == ["batch"] * len(sent)
    assert [start for _, start, _ in sent] == [0] + [stop for _, _, stop in sent[:-1]]
    assert sent[-1][2] == 20
    assert not pair.client._registered_write  # unregistered once drained
    assert wire.idle_writes == 0

    pair.client._ping_t = 1.0  # a PINGREQ is out
    pair.peer.sendall(b"".join(b"\x40\x02" + m.to_bytes(2, "big") for m in range(1, 21)))
    pair.peer.sendall(b"\xd0\x00")  # PINGRESP: read by the Wire, noted where paho looks
    while len(acked) < 20 or pair.client._ping_t:
        pair.wait_readable()
        assert pair.client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert acked == list(range(1, 21))
    assert wire.outstanding == 0

    pair.peer.close()  # the broker goes away: paho's own error path, on_disconnect runs
    while not pair.disconnects:
        pair.wait_readable()
        pair.client.loop_read()
    assert wire.dead
    assert len(pair.disconnects) == 1
    assert pair.disconnects[0].is_failure


async def test_qos0_frames_without_packet_ids(pair: Pair) -> None:
    sent: list[int] = []
    wire: Wire[int] = Wire(
        pair.client,
        "a/b",
        0,
        on_ack=lambda mid: None,
        on_sent=lambda batch, start, stop: sent.append(batch),
        on_drained=lambda: None,
    )
    wire.publish(b"x" * 200, 7)
    wire.publish(b"y", 8)
    wire.send(2)
    assert sent == [2]
    assert not wire.busy
    expected = b"\x30" + remaining_length(205) + b"\x00\x03a/b" + b"x" * 200
    expected += b"\x30\x06\x00\x03a/by"
    assert pair.read_exactly(len(expected)) == expected


async def test_a_packet_paho_queues_in_the_pass_the_wire_writes_leaves_no_writer_spinning(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """paho queues a packet of its own (here a SUBSCRIBE; in a run the PINGREQ) and asks for
    the writer; in the same loop pass the Wire writes a batch and paho's packet after it,
    which removes the writer. aiomqtt added writers one pass late: the late writer then fired
    on every pass, with nothing to write, forever (100 % of a core)."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "race-thing")
    endpoint = f"127.0.0.1:{mosquitto.port}"
    tls = ClientTls(ca_pem=mosquitto.ca_file.read_text(), alpn=False)
    link = await connect(
        host="127.0.0.1",
        port=mosquitto.port,
        client_id="race-thing",
        tls=tls.identity(cert_file=cert_file, key_file=key_file),
        within=10,
    )
    sent: list[int] = []
    subscribed = asyncio.Event()
    wire: Wire[int] = Wire(
        link.paho,
        "elf/race",
        0,
        on_ack=lambda mid: None,
        on_sent=lambda batch, start, stop: sent.append(batch),
        on_drained=lambda: None,
    )
    link.paho.on_subscribe = lambda *args: subscribed.set()
    try:
        link.paho.subscribe("elf/race-replies", qos=0)  # paho asks for the writer...
        wire.publish(b"x", 0)
        wire.send(1)  # ...and the Wire writes first, then paho's SUBSCRIBE
        await asyncio.wait_for(subscribed.wait(), 10)  # the SUBACK: the broker got both
        for _ in range(1000):  # a thousand loop passes with nothing to write
            await asyncio.sleep(0)
        assert sent == [1], endpoint
        assert wire.idle_writes == 0, f"the writer fired {wire.idle_writes} times for nothing"
    finally:
        await link.close()


@dataclass
class _IdleWire:
    """A connection with no traffic, as paho's timers see it: a PINGREQ (answered at once)
    whenever a visit finds the keep-alive elapsed; how late each one was."""

    keepalive: int
    last: float
    now: float = 0.0
    visits: int = 0
    late: list[float] = field(default_factory=list)
    dead: bool = False

    @property
    def keepalive_due(self) -> float:
        return self.last + self.keepalive

    def keep_alive(self) -> None:
        self.visits += 1
        if self.now - self.last >= self.keepalive:
            self.late.append(self.now - self.keepalive_due)
            self.last = self.now


@pytest.mark.parametrize("keepalive", [1, 5, 30])
def test_the_keep_alive_pass_visits_a_connection_when_it_is_due_not_every_second(
    keepalive: int,
) -> None:
    """An idle fleet costs one visit per connection per keep-alive (each visit sends the
    PINGREQ), and none is a pass or more late. The clock is simulated, second by second."""
    takeover = Takeover(epoll=False)
    wires = [_IdleWire(keepalive, last=i / 100) for i in range(100)]
    for wire in wires:
        takeover._schedule(wire, 0.0)  # type: ignore[arg-type]
    for second in range(1, 3 * keepalive + 2):
        for wire in wires:
            wire.now = float(second)
        takeover.keep_alive_pass(float(second))
    for wire in wires:
        assert wire.visits == len(wire.late) >= 3
        assert all(0 <= late < 1 for late in wire.late), wire.late
