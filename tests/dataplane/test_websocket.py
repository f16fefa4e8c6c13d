"""WebSocket framing (elf_async.dataplane.websocket): client frames masked as RFC 6455 says,
the broker's frames turned back into the MQTT byte stream, the upgrade's answer checked."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.mqtt import FixtureCA

from elf_async.dataplane.mqtt import ClientTls, ConnectFailed, connect
from elf_async.dataplane.takeover import Takeover
from elf_async.dataplane.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    WebSocketRefused,
    accept_key,
    check_response,
    frame,
    mask,
    upgrade_request,
)
from elf_async.local.mosquitto import Mosquitto


def _naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 65535, 65536, 200_001])
def test_mask_is_the_bytewise_xor(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    assert mask(data, key) == _naive_mask(data, key)
    assert mask(mask(data, key), key) == data


@pytest.mark.parametrize(("size", "head"), [(10, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_a_client_frame_is_final_binary_and_masked(size: int, head: int) -> None:
    data = os.urandom(size)
    framed = frame(data)
    assert framed[0] == 0x80 | OP_BINARY
    assert framed[1] & 0x80  # masked
    assert len(framed) == head + 4 + size
    key = framed[head : head + 4]
    assert _naive_mask(framed[head + 4 :], key) == data
    reader = FrameReader()  # a masked frame is unmasked too
    reader.feed(framed)
    assert reader.stream == data


def _server_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big") + payload


def test_frames_split_anywhere_give_the_stream_in_order() -> None:
    pubacks = b"".join(bytes((0x40, 2, 0, n)) for n in range(1, 50))
    raw = _server_frame(pubacks[:100]) + _server_frame(pubacks[100:]) + _server_frame(b"x" * 70000)
    reader = FrameReader()
    for start in range(0, len(raw), 7):
        reader.feed(raw[start : start + 7])
    assert reader.stream == pubacks + b"x" * 70000
    assert not reader.closed


def test_a_ping_is_answered_and_a_close_ends_the_stream() -> None:
    reader = FrameReader()
    reader.feed(_server_frame(b"hi", OP_PING) + _server_frame(b"\x40\x02\x00\x01"))
    assert reader.stream == b"\x40\x02\x00\x01"
    (pong,) = reader.pongs
    assert pong[0] == 0x80 | OP_PONG
    assert _naive_mask(pong[6:], pong[2:6]) == b"hi"
    reader.feed(_server_frame(b"\x03\xe8", OP_CLOSE) + _server_frame(b"late"))
    assert reader.closed
    assert reader.stream == b"\x40\x02\x00\x01"


def test_the_upgrade_asks_for_mqtt_on_the_presigned_path() -> None:
    request = upgrade_request(host="h.example", path="/mqtt?X-Amz-Date=1&a=%2F", key="k==")
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /mqtt?X-Amz-Date=1&a=%2F HTTP/1.1"
    assert "Sec-WebSocket-Protocol: mqtt" in lines
    assert "Host: h.example" in lines
    assert request.endswith(b"\r\n\r\n")


def test_the_answer_must_switch_protocols_with_the_right_key() -> None:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    assert accept_key(key) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example
    ok = f"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept_key(key)}"
    check_response(ok.encode(), key=key)
    with pytest.raises(WebSocketRefused, match="wrong accept key"):
        check_response(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x", key=key)
    with pytest.raises(WebSocketRefused, match="403 Forbidden") as refused:
        check_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0", key=key)
    assert refused.value.permanent


def test_one_small_frame_per_read_is_taken_whole() -> None:
    reader = FrameReader()
    for mid in (1, 2):
        reader.feed(memoryview(_server_frame(bytes((0x40, 2, 0, mid)))))
    assert reader.stream == b"\x40\x02\x00\x01\x40\x02\x00\x02"


@pytest.fixture
def broker(test_ca: FixtureCA, tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto with its WebSocket listener (TLS, no client certificate)."""
    started = Mosquitto.start(directory=tmp_path / "mosquitto", ca=test_ca.ca, listeners=True)
    try:
        yield started
    finally:
        started.stop()


async def test_the_wire_and_paho_both_speak_through_frames(broker: Mosquitto) -> None:
    """Over a real WebSocket: a Wire's batch of 50 QoS 1 messages goes out as one frame and its
    50 PUBACKs come back out of the broker's frames; paho's own SUBSCRIBE goes in a frame and
    its SUBACK and the PUBLISH it brings are handed to paho; DISCONNECT closes cleanly."""
    assert broker.listeners is not None
    port = broker.listeners.websocket
    paths: list[str] = []

    def path() -> str:
        paths.append(f"/mqtt?attempt={len(paths)}")
        return paths[-1]

    link = await connect(
        host="127.0.0.1",
        port=port,
        client_id="ws-thing",
        tls=ClientTls(ca_pem=broker.ca_file.read_text(), alpn=False).bare(),
        within=10,
        websocket_path=path,
    )
    assert paths == ["/mqtt?attempt=0"]
    acked: list[int] = []
    all_acked = asyncio.Event()
    received: list[bytes] = []
    got = asyncio.Event()
    subscribed = asyncio.Event()
    takeover = Takeover()

    def on_ack(mid: int) -> None:
        acked.append(mid)
        if len(acked) == 50:
            all_acked.set()

    try:
        wire = takeover.install(
            link.client, "elf/ws", 1, on_ack=on_ack, on_sent=lambda *a: None,
            on_drained=lambda: None,
        )  # fmt: skip
        link.paho.on_subscribe = lambda *args: subscribed.set()
        link.paho.on_message = lambda _c, _u, message: (received.append(message.payload), got.set())
        link.paho.subscribe("elf/ws", qos=0)
        await asyncio.wait_for(subscribed.wait(), 10)
        for mid in range(1, 51):
            wire.publish(b"%d" % mid, mid)
        wire.send(1)
        await asyncio.wait_for(all_acked.wait(), 10)
        assert sorted(acked) == list(range(1, 51))
        await asyncio.wait_for(got.wait(), 10)
        assert received[0] == b"1"
    finally:
        takeover.close()
        await link.close()
    assert link.lost.result() == "connection lost (Normal disconnection)"  # our DISCONNECT


async def test_a_refused_upgrade_is_a_permanent_connect_failure(broker: Mosquitto) -> None:
    """A broker that answers the upgrade with 403 (AWS IoT's answer to a bad signature): the
    status line is the reason, and retrying is futile; the request carried the signed path."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(broker.directory / "server.crt", broker.directory / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def answer() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            request = b""
            while b"\r\n\r\n" not in request:
                request += tls.recv(4096)
            requests.append(request)
            tls.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    try:
        refusal = r"refused the WebSocket upgrade: HTTP/1\.1 403 Forbidden"
        with pytest.raises(ConnectFailed, match=refusal) as e:
            await connect(
                host="127.0.0.1",
                port=listener.getsockname()[1],
                client_id="ws-thing",
                tls=ClientTls(ca_pem=broker.ca_file.read_text(), alpn=False).bare(),
                within=10,
                websocket_path=lambda: "/mqtt?X-Amz-Signature=bad",
            )
        assert e.value.permanent
    finally:
        server.join(10)
        listener.close()
    assert requests[0].startswith(b"GET /mqtt?X-Amz-Signature=bad HTTP/1.1\r\n")


def test_a_read_of_pubacks_only_and_one_with_another_packet_give_the_same_stream() -> None:
    pubacks = [bytes((0x40, 2, mid >> 8, mid & 255)) for mid in range(300)]
    reader = FrameReader()
    reader.feed(b"".join(_server_frame(p) for p in pubacks))  # the strided path
    assert reader.stream == b"".join(pubacks)
    other = bytes((0x30, 2, 0, 0))  # a 4-byte packet that is no PUBACK, in a 6-byte frame too
    reader = FrameReader()
    reader.feed(b"".join(_server_frame(p) for p in [*pubacks[:5], other, *pubacks[5:]]))
    assert reader.stream == b"".join([*pubacks[:5], other, *pubacks[5:]])
