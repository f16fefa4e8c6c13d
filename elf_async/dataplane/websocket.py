"""MQTT inside WebSocket frames (RFC 6455), over a TLS socket made on the event loop.

AWS IoT takes MQTT over WebSockets at ``wss://<endpoint>/mqtt`` (port 443), the credentials in
the path's SigV4 query (elf_async.dataplane.sigv4). paho has a WebSocket transport, but it makes
its own blocking handshake and masks a frame byte by byte in Python: neither fits a connect made
on the loop or the batched hot path. So:

- `upgrade` makes the HTTP upgrade on the loop, on the TLS socket `open_tls` made;
- a `WebSocket` then stands in for that TLS socket: paho sends CONNECT, PINGREQ and DISCONNECT
  through its ``send`` and reads CONNACK and PINGRESP through its ``recv``; the hot path's
  `Wire` writes and reads through its ``write``/``read``/``pending``, the same calls it makes
  on the OpenSSL object of a plain TLS connection (the Wire hands it the socket's OpenSSL
  object: `direct`). A Wire's batch therefore goes out as ONE binary frame, masked in a few
  C-level operations (`frame`), and PUBACKs come out of the broker's frames before the Wire
  parses them (`FrameReader`, with fast paths for the reads a publisher gets).

The TLS socket's private OpenSSL object is taken in elf_async.dataplane.takeover, the one module
that touches private names.

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
from typing import Any, Protocol, cast

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


# XOR with one byte value, as a translation table per value: `bytes.translate` applies one at
# C speed, so masking is four strided translations (measured: 64 KB in ~135 µs, where one XOR
# of two big integers took ~350 µs and a Python loop per byte ~10 ms). Below _SMALL bytes the
# big-integer XOR is cheaper (~2 µs for a 140-byte batch against ~5 µs).
_SMALL = 1024
_XOR = [bytes(value ^ key for value in range(256)) for key in range(256)]


def mask_into(out: bytearray, at: int, data: bytes | bytearray, key: bytes) -> None:
    """Write `data` XORed with the 4-byte `key` repeated (RFC 6455 5.3) into `out` from `at`;
    `out` must hold ``at + len(data)`` bytes."""
    for lane in range(4):
        out[at + lane :: 4] = data[lane::4].translate(_XOR[key[lane]])


def mask(data: bytes | bytearray, key: bytes) -> bytes:
    """`data` masked with `key` (unmasked, if it was)."""
    out = bytearray(len(data))
    mask_into(out, 0, data, key)
    return bytes(out)


def frame(data: bytes | bytearray | memoryview, *, opcode: int = OP_BINARY) -> bytes | bytearray:
    """One final client frame carrying `data`, masked with a fresh key: a small one as one
    big-integer XOR, a larger one by translations into one buffer."""
    size = len(data)
    if size < 126:
        head = bytes((_FIN | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((_FIN | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((_FIN | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = _KEYS.next()
    if size < _SMALL:  # one XOR of two integers: fewer calls than four translations
        value = int.from_bytes(data, "big") ^ int.from_bytes((key * (size // 4 + 1))[:size], "big")
        return head + key + value.to_bytes(size, "big")
    at = len(head) + 4
    out = bytearray(at + size)
    out[: at - 4] = head
    out[at - 4 : at] = key
    mask_into(out, at, data.tobytes() if isinstance(data, memoryview) else data, key)
    return out


class _KeyPool:
    """Four unpredictable bytes per frame (RFC 6455 5.3), from a pool: ``os.urandom`` per frame
    is a system call per batch."""

    __slots__ = ("_at", "_pool")
    SIZE = 4096  # bytes of os.urandom per refill: 1,024 masking keys for one system call

    def __init__(self) -> None:
        self._pool, self._at = b"", 0

    def next(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(self.SIZE), 0
        self._at = at + 4
        return self._pool[at : at + 4]


_KEYS = _KeyPool()


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
        self.pongs: list[bytes | bytearray] = []  # pong frames to send
        self.closed = False

    @property
    def partial(self) -> bool:
        """Part of a frame is waiting for the rest."""
        return bool(self._raw)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take raw bytes; every whole frame in them goes to `stream`, `pongs` or `closed`."""
        raw = self._raw
        if not raw:
            size = len(data)
            if size > 2 and data[0] == _FIN | OP_BINARY and data[1] == size - 2:
                self.stream += data[2:]  # exactly one small binary frame: a PUBACK's, when paced
                return
            if size % 6 == 0 and _all_pubacks(bytes(data)):
                # PUBACKs, one per frame, the bulk of a busy connection's reads: their payloads
                # taken out by four strided copies, not a Python step per frame
                out = bytearray(size // 6 * 4)
                for lane in range(4):
                    out[lane::4] = data[2 + lane :: 6]
                self.stream += out
                return
        raw += data
        pos, size = 0, len(raw)
        stream = self.stream
        while size - pos >= 2:
            second = raw[pos + 1]
            if second < 126 and raw[pos] == _FIN | OP_BINARY:  # small, unmasked: the usual one
                if size - pos - 2 < second:
                    break
                stream += raw[pos + 2 : pos + 2 + second]
                pos += 2 + second
                continue
            opcode = raw[pos] & 0x0F
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


_PUBACK_FRAME_HEAD = bytes((_FIN | OP_BINARY, 4, 0x40, 2))


def _all_pubacks(data: bytes) -> bool:
    """`data` is whole 6-byte frames, each carrying one PUBACK (0x40 0x02 and a packet id)."""
    count = len(data) // 6
    return all(data[lane::6].count(_PUBACK_FRAME_HEAD[lane]) == count for lane in range(4))


class _TLSObject(Protocol):
    """An OpenSSL connection: CPython's under an ``ssl.SSLSocket``, or the socket itself."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def read(self, size: int, buffer: bytearray, /) -> int: ...
    def pending(self) -> int: ...


class WebSocket:
    """A TLS socket after the upgrade, seen as an MQTT byte stream: by paho (``send``,
    ``recv``) and by the hot path's `Wire` (``write``, ``read``, ``pending``)."""

    def __init__(self, tls_socket: ssl.SSLSocket, *, early: bytes = b"") -> None:
        self.tls_socket = tls_socket
        # What frames are read from and written to: the socket, or (`direct`) its OpenSSL
        # connection, as the Wire of a plain TLS connection uses it.
        self._io: _TLSObject = cast(_TLSObject, tls_socket)
        self._frames = FrameReader()
        self._raw = bytearray(_READ_SIZE)
        self._unsent: bytes | bytearray | None = None  # a frame OpenSSL refused for now
        self._unsent_for = 0  # its payload's length
        if early:
            self._frames.feed(early)

    def direct(self, tls_object: _TLSObject) -> None:
        """Read and write `tls_object`, the socket's OpenSSL connection (takeover.py has it):
        two Python calls fewer per read and per write."""
        self._io = tls_object

    # --- the Wire's side (what it calls on an OpenSSL object) --------------------------------
    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Write `data` as one binary frame; all of it or raise ``ssl.SSLWantWriteError`` (then
        the caller retries with the same data and the same frame goes)."""
        if self._unsent is None or self._unsent_for != len(data):
            self._unsent, self._unsent_for = frame(data), len(data)
        try:
            self._io.write(self._unsent)
        except ValueError:  # closed: as the OpenSSL object of a closed socket says it
            raise OSError(errno.EBADF, "the connection is closed") from None
        self._unsent = None
        return len(data)

    def read(self, size: int, buffer: bytearray, /) -> int:
        """Up to `size` MQTT bytes into `buffer`; 0 when the broker closed; raises
        ``ssl.SSLWantReadError`` when no whole frame has come yet."""
        frames = self._frames
        stream = frames.stream
        raw = self._raw
        while not stream:
            if frames.closed:
                return 0
            try:
                count = self._io.read(_READ_SIZE, raw)  # raises when nothing is there
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return 0
            except ValueError:  # closed
                raise OSError(errno.EBADF, "the connection is closed") from None
            if not count:
                return 0
            if (
                count > 2
                and raw[0] == _FIN | OP_BINARY
                and raw[1] == count - 2
                and count - 2 <= size
                and not frames.partial
            ):  # exactly one small binary frame (a PUBACK's, the usual read): straight over
                buffer[: count - 2] = memoryview(raw)[2:count]
                return count - 2
            frames.feed(memoryview(raw)[:count])
            self._answer_pings()
        count = min(size, len(stream))
        buffer[:count] = stream[:count]
        del stream[:count]
        return count

    def pending(self) -> int:
        """MQTT bytes readable without waiting for the socket (or TLS bytes that may hold some)."""
        return len(self._frames.stream) + self._io.pending()

    def _answer_pings(self) -> None:
        frames = self._frames
        while frames.pongs and self._unsent is None:
            try:
                self._io.write(frames.pongs[0])
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
