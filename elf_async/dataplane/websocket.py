"""MQTT inside WebSocket frames (RFC 6455), over a TLS socket made on the event loop.

AWS IoT takes MQTT over WebSockets at ``wss://<endpoint>/mqtt`` (port 443), the credentials in
the path's SigV4 query (elf_async.dataplane.sigv4). paho has a WebSocket transport, but it makes
its own blocking handshake and masks a frame byte by byte in Python: neither fits a connect made
on the loop or the batched hot path. So:

- `upgrade` makes the HTTP upgrade on the loop, on the TLS socket `open_tls` made;
- a `WebSocket` then stands in for that TLS socket: paho sends CONNECT, PINGREQ and DISCONNECT
  through its ``send`` and reads CONNACK and PINGRESP through its ``recv``; the hot path's
  `Wire` writes and reads through its ``write``/``read``/``pending``, the same calls it makes
  on the OpenSSL object of a plain TLS connection. A Wire's batch therefore goes out as ONE
  binary frame, masked in one operation on big integers (`mask`), and PUBACKs come out of the
  broker's frames before the Wire parses them.

Client frames must be masked (RFC 6455 5.3), with a fresh random key per frame. A write that
OpenSSL refuses for now must be retried with the same bytes: the frame made for it is kept
until it is written, and a retry with the same data writes it again.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
import ssl
from typing import Any, cast

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_FIN = 0x80
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_RESPONSE = 16 * 1024  # an upgrade response's headers, at most
_READ_SIZE = 1 << 16


class WebSocketRefused(Exception):
    """The broker did not upgrade the connection; the message says why (its status line).
    `permanent`: it answered with a status (403: a bad or expired signature), so the same
    request would be refused again."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


def mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """`data` XORed with the 4-byte `key` repeated, as RFC 6455 masks a payload: one XOR on
    two big integers (~1 GB/s), not a Python loop per byte."""
    size = len(data)
    if not size:
        return b""
    repeated = key * (size // 4 + 1)
    value = int.from_bytes(data, "big") ^ int.from_bytes(repeated[:size], "big")
    return value.to_bytes(size, "big")


def frame(data: bytes | bytearray | memoryview, *, opcode: int = OP_BINARY) -> bytes:
    """One final client frame carrying `data`, masked with a fresh key."""
    size = len(data)
    if size < 126:
        head = bytes((_FIN | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((_FIN | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((_FIN | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = _masking_key()
    return head + key + mask(data, key)


_KEY_POOL = 4096  # bytes of os.urandom per refill: 1,024 masking keys for one system call
_keys = memoryview(b"")


def _masking_key() -> bytes:
    """Four unpredictable bytes (RFC 6455 5.3), from a pool: ``os.urandom`` per frame is a
    system call per batch."""
    global _keys
    if len(_keys) < 4:
        _keys = memoryview(os.urandom(_KEY_POOL))
    key, _keys = bytes(_keys[:4]), _keys[4:]
    return key


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server answers `key` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def upgrade_request(*, host: str, path: str, key: str) -> bytes:
    """The HTTP/1.1 upgrade to MQTT over WebSocket (subprotocol ``mqtt``, as AWS IoT needs)."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n"
        "\r\n"
    ).encode()


def check_response(head: bytes, *, key: str) -> None:
    """Raise `WebSocketRefused` unless `head` (the response up to its blank line) accepts the
    upgrade for `key`."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].strip()
    if status.split(" ")[1:2] != ["101"]:
        raise WebSocketRefused(
            f"the broker refused the WebSocket upgrade: {status or 'no status'}",
            permanent=bool(status),
        )
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise WebSocketRefused("the broker answered the WebSocket upgrade with a wrong accept key")


class FrameReader:
    """The broker's frames to an MQTT byte stream: payloads of binary (and continuation)
    frames are the stream; a ping is answered, a close ends it. Server frames are unmasked
    (RFC 6455 5.1), a masked one is unmasked anyway."""

    __slots__ = ("_raw", "closed", "pongs", "stream")

    def __init__(self) -> None:
        self._raw = bytearray()
        self.stream = bytearray()  # MQTT bytes not yet taken
        self.pongs: list[bytes] = []  # pong frames to send
        self.closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take raw bytes; every whole frame in them goes to `stream`, `pongs` or `closed`."""
        raw = self._raw
        if not raw and len(data) > 2 and data[0] == _FIN | OP_BINARY and data[1] == len(data) - 2:
            self.stream += data[2:]  # exactly one small binary frame: a PUBACK's, the usual read
            return
        raw += data
        pos, size = 0, len(raw)
        while size - pos >= 2:
            opcode, second = raw[pos] & 0x0F, raw[pos + 1]
            length, at = second & 0x7F, pos + 2
            if length == 126:
                if size - at < 2:
                    break
                length, at = int.from_bytes(raw[at : at + 2], "big"), at + 2
            elif length == 127:
                if size - at < 8:
                    break
                length, at = int.from_bytes(raw[at : at + 8], "big"), at + 8
            key = b""
            if second & 0x80:
                if size - at < 4:
                    break
                key, at = bytes(raw[at : at + 4]), at + 4
            if size - at < length:
                break
            payload = raw[at : at + length]
            if key:
                payload = bytearray(mask(payload, key))
            pos = at + length
            if opcode in (OP_BINARY, OP_CONTINUATION, OP_TEXT):
                self.stream += payload
            elif opcode == OP_PING:
                self.pongs.append(frame(payload, opcode=OP_PONG))
            elif opcode == OP_CLOSE:
                self.closed = True
                break
        del raw[:pos]


class WebSocket:
    """A TLS socket after the upgrade, seen as an MQTT byte stream: by paho (``send``,
    ``recv``) and by the hot path's `Wire` (``write``, ``read``, ``pending``)."""

    def __init__(self, tls_socket: ssl.SSLSocket, *, early: bytes = b"") -> None:
        self.tls_socket = tls_socket
        self._frames = FrameReader()
        self._raw = bytearray(_READ_SIZE)
        self._unsent: bytes | None = None  # the frame of a write OpenSSL refused for now
        self._unsent_for = 0  # its payload's length
        if early:
            self._frames.feed(early)

    # --- the Wire's side (what it calls on an OpenSSL object) --------------------------------
    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Write `data` as one binary frame; all of it or raise ``ssl.SSLWantWriteError`` (then
        the caller retries with the same data and the same frame goes)."""
        if self._unsent is None or self._unsent_for != len(data):
            self._unsent, self._unsent_for = frame(data), len(data)
        try:
            self.tls_socket.write(self._unsent)
        except ValueError:  # closed: as the OpenSSL object of a closed socket says it
            raise OSError(errno.EBADF, "the connection is closed") from None
        self._unsent = None
        return len(data)

    def read(self, size: int, buffer: bytearray, /) -> int:
        """Up to `size` MQTT bytes into `buffer`; 0 when the broker closed; raises
        ``ssl.SSLWantReadError`` when no whole frame has come yet."""
        stream = self._frames.stream
        while not stream:
            if self._frames.closed:
                return 0
            try:
                # raises when nothing is there; with a buffer, it returns a count (typeshed: bytes)
                count = cast(int, self.tls_socket.read(_READ_SIZE, self._raw))
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return 0
            except ValueError:  # closed
                raise OSError(errno.EBADF, "the connection is closed") from None
            if not count:
                return 0
            self._frames.feed(memoryview(self._raw)[:count])
            self._answer_pings()
        count = min(size, len(stream))
        buffer[:count] = stream[:count]
        del stream[:count]
        return count

    def pending(self) -> int:
        """MQTT bytes readable without waiting for the socket (or TLS bytes that may hold some)."""
        return len(self._frames.stream) + self.tls_socket.pending()

    def _answer_pings(self) -> None:
        frames = self._frames
        while frames.pongs and self._unsent is None:
            try:
                self.tls_socket.write(frames.pongs[0])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return  # answered with the next read
            frames.pongs.pop(0)

    # --- paho's side (what it calls on a socket) ---------------------------------------------
    def send(self, data: bytes | bytearray, /) -> int:
        return self.write(data)

    def recv(self, size: int, /) -> bytes:
        buffer = bytearray(size)
        count = self.read(size, buffer)
        return bytes(buffer[:count])

    def fileno(self) -> int:
        return self.tls_socket.fileno()

    def setblocking(self, flag: bool) -> None:
        self.tls_socket.setblocking(flag)

    def close(self) -> None:
        self.tls_socket.close()

    def shutdown(self, how: int) -> None:
        self.tls_socket.shutdown(how)

    def __getattr__(self, name: str) -> Any:
        """Whatever else paho or aiomqtt asks of a socket (``setsockopt``, ...)."""
        return getattr(self.tls_socket, name)


async def upgrade(tls_socket: ssl.SSLSocket, *, host: str, path: str) -> WebSocket:
    """The HTTP upgrade on the event loop, on a TLS socket just made (non-blocking). Raises
    `WebSocketRefused` (the broker's status line), ssl or OS errors."""
    key = base64.b64encode(os.urandom(16)).decode()
    loop = asyncio.get_running_loop()
    await _write_all(tls_socket, upgrade_request(host=host, path=path, key=key), loop)
    received = bytearray()
    while b"\r\n\r\n" not in received:
        if len(received) > _MAX_RESPONSE:
            raise WebSocketRefused("the broker's WebSocket upgrade response is too long")
        try:
            chunk = tls_socket.recv(_READ_SIZE)
        except ssl.SSLWantReadError:
            await _ready(tls_socket, loop, write=False)
            continue
        except ssl.SSLWantWriteError:
            await _ready(tls_socket, loop, write=True)
            continue
        if not chunk:
            raise WebSocketRefused("the broker closed the connection during the WebSocket upgrade")
        received += chunk
    head, _, early = bytes(received).partition(b"\r\n\r\n")
    check_response(head, key=key)
    return WebSocket(tls_socket, early=early)


async def _write_all(sock: ssl.SSLSocket, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except ssl.SSLWantWriteError:
            await _ready(sock, loop, write=True)
        except ssl.SSLWantReadError:
            await _ready(sock, loop, write=False)


async def _ready(sock: ssl.SSLSocket, loop: asyncio.AbstractEventLoop, *, write: bool) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)
