"""The hot path's takeover of aiomqtt and paho: the one module that touches their private parts.

`Takeover.install` hands a connected aiomqtt client's socket to a `Wire`: the Wire registers
its own writer, `Readers` reads the socket (aiomqtt's reader is removed), and one keep-alive
pass a second (`Takeover`) replaces aiomqtt's task per client. `PRIVATE_NAMES` lists every
private name of paho-mqtt, aiomqtt and CPython used here; the versions these are verified
against are pinned (elf_async/compat.py), and tests/dataplane/test_takeover_contract.py checks
the behaviour on the installed versions over a real TLS connection. Linux uses one epoll set
for all publishing sockets; elsewhere each socket gets a reader of its own on the loop.

A publisher connection's own socket I/O, under its aiomqtt client.

paho writes one PUBLISH per ``send()`` and reads one TLS record (one PUBACK, three ``recv()``
calls) per readiness event: measured, that caps any paho-based publisher well below gmqtt
(benchmarks/NOTES.md, findings 1-3). A `Wire` takes over the two socket callbacks of a
connected client: the event loop's reader callback becomes the Wire's own, and aiomqtt's writer
callback calls paho's ``loop_write`` by name, which the Wire replaces:

- writing: PUBLISH packets are framed here from a cached fixed header and topic, and what one
  pump framed goes out in one ``send()``. What the socket does not take is kept and written
  when it becomes writable (registered through paho, so aiomqtt's writer callback runs);
  paho's own packets (DISCONNECT; a PINGREQ when ours cannot go) are written by paho, never
  inside one of ours.
  A batch counts as sent only once all its bytes are in the kernel.
- reading: every TLS record available is read at once, straight from the OpenSSL connection into
  one shared buffer, and PUBACKs and PINGRESPs are parsed here; any other packet is handed to
  paho's own packet handler.
- keep-alive: an idle connection's PINGREQ is written here and its PINGRESP read here, with
  paho's own bookkeeping (``_ping_t``, the last packet out and in) kept as paho keeps it, so that
  paho's timers agree; anything unusual (a PINGRESP that never came, a socket that is busy) is
  left to paho's timers as before. An idle fleet's whole cost is its PINGREQs: through paho,
  each cost a packet queued, a log call and a packet dict per direction.

All publishing on such a link goes through its Wire, so paho allocates no message IDs there
and the caller's IDs cannot collide with paho's. Errors go through paho's own error path
(``_loop_rc_handle``): the socket is closed and ``on_disconnect`` runs, exactly as when paho
itself fails a read or a write, so aiomqtt and `Link.lost` see a lost connection as before.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import select
import ssl
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from elf_async.dataplane.mqtt5 import FAILED, puback, remaining_length
from elf_async.dataplane.websocket import WebSocket

Token = TypeVar("Token")

PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "paho.mqtt.client.Client": (
        "_sock",
        "_out_packet",
        "_in_packet",
        "_packet_handle",
        "_loop_rc_handle",
        "_call_socket_register_write",
        "_call_socket_unregister_write",
        "_registered_write",
        "_last_msg_out",
        "_last_bytes_received",
        "_ping_t",
        "_easy_log",
        "_sock_close",
        "_create_socket",
    ),
    "aiomqtt.Client": (
        "_client",
        "_misc_task",
        "_disconnected",
        "_connected",
        "_lock",
        "_client_connect",
        "_wait_for",
    ),
    "ssl.SSLSocket": ("_sslobj",),
}
"""Every private name of another package this module uses, by the class that owns it."""

HAVE_EPOLL = hasattr(select, "epoll")
KEEPALIVE_PASS_S = 1.0  # as aiomqtt's own task per client: paho's keep-alive timers need no finer

_PUBACK = 0x40
_PINGREQ = b"\xc0\x00"
_PINGRESP = 0xD0
_WRITE_CHUNK = 1 << 16  # a write OpenSSL refused is retried with the same bytes: keep them few
_READ_SIZE = 1 << 16  # one TLS record is at most 16 KB of plaintext
_READS_PER_EVENT = 64  # bounds one reader callback, so one busy connection cannot hog the loop
# Every Wire reads into this one buffer and copies out at once (one event loop per process).
_READ_BUFFER = bytearray(_READ_SIZE)
_READ_VIEW = memoryview(_READ_BUFFER)
_NOT_NOW = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
_OK = paho.MQTT_ERR_SUCCESS


def _in_packet(command: int, body: bytearray) -> paho._InPacket:
    """paho's reader state: a whole packet read (`command` 0: none, as between packets)."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": len(body),
        "packet": body,
        "to_process": 0,
        "pos": 0,
    }


class _TLSObject(Protocol):
    """The OpenSSL connection of an `ssl.SSLSocket` (CPython's private ``_ssl._SSLSocket``)."""

    def write(self, data: bytes | memoryview, /) -> int: ...
    def read(self, size: int, buffer: bytearray, /) -> int: ...
    def pending(self) -> int: ...


class Wire(Generic[Token]):
    """PUBLISH out and PUBACK in for one connected client; `Token` identifies a batch."""

    def __init__(
        self,
        client: paho.Client,
        topic: str,
        qos: int,
        *,
        on_ack: Callable[[int], None],
        on_sent: Callable[[Token, int, int], None],
        on_drained: Callable[[], None],
        properties: bytes | None = None,
        aliased: bool = False,
        on_refused: Callable[[int, int], None] | None = None,
    ) -> None:
        sock = client._sock
        if not isinstance(sock, ssl.SSLSocket | WebSocket):
            raise TypeError("a Wire needs a connected TLS client")
        self._client = client
        self._sock = sock
        # The OpenSSL connection under `sock`: `ssl.SSLSocket.send`/`recv` add three Python
        # calls per message around it, and `recv` allocates a buffer of the size asked for.
        # Over WebSocket, the WebSocket takes the same calls: a batch is one frame.
        if isinstance(sock, WebSocket):
            sock.direct(sock.tls_socket._sslobj)  # type: ignore[attr-defined]
            self._tls: _TLSObject = sock
        else:
            self._tls = sock._sslobj  # type: ignore[attr-defined]
        encoded = topic.encode()
        self._topic = len(encoded).to_bytes(2, "big") + encoded
        self._qos = qos
        self._head = b""  # fixed header + topic for payloads of `_head_for` bytes
        self._head_for = -1
        self._parts: list[bytes] = []  # framed, not yet handed to `send`
        self.size = 0  # bytes in `_parts`
        self._ends: list[int] = []  # where each message framed into `_parts` ends
        self._unsent: bytes | memoryview = b""
        self._batch: Token | None = None  # the batch `_unsent` belongs to
        self._batch_ends: list[int] = []  # where each of its messages ends, in bytes
        self._batch_size = 0
        self._done = 0  # its messages entirely in the kernel (and reported to `on_sent`)
        self._received = bytearray()
        self.outstanding = 0  # QoS 1 messages framed and not yet acknowledged
        self._on_ack = on_ack
        self._on_sent = on_sent
        self._on_drained = on_drained
        self.idle_writes = 0  # writer callbacks that found nothing to write (a spinning writer)
        self._writing_now = False  # paho's packets are written by the caller, not a writer
        self._pinging = False  # our PINGREQ is partly unsent: frame nothing until it is
        self._loop = asyncio.get_running_loop()
        # MQTT 5 (elf_async.dataplane.mqtt5): every PUBLISH carries `properties` after its
        # packet id; `aliased`: the first one sends the topic, the later ones an empty topic.
        self._properties = properties
        self._full_topic = self._topic if aliased else None
        self._on_refused = on_refused
        self._framing = 0  # MQTT 5: the bytes `_head` and the rest add to a payload
        if properties is not None:
            self.publish = self._publish5  # type: ignore[method-assign]
        client.loop_read = self.loop_read  # type: ignore[method-assign]
        client.loop_write = self.loop_write  # type: ignore[method-assign]
        self._own_writer_registration()

    def _own_writer_registration(self) -> None:
        """Register and unregister the writer on the loop at once, as paho asks.

        aiomqtt defers the registration (``call_soon_threadsafe``, as paho may ask from its
        connect thread) but removes it at once. When paho queues a packet (PINGREQ, a reply,
        DISCONNECT) in the same loop pass in which we write it out, the deferred registration
        lands after the removal: the writer then fires on every pass, forever, at 100 % CPU.
        From here on every request comes from the loop's thread, so the Wire does it itself.
        """
        client, loop, fd = self._client, self._loop, self._sock.fileno()

        def register(_client: paho.Client, _userdata: Any, sock: Any) -> None:
            if not self._writing_now:  # else `keep_alive` writes it in this very pass
                loop.add_writer(sock.fileno(), self.loop_write)

        def unregister(_client: paho.Client, _userdata: Any, sock: Any) -> None:
            if sock.fileno() >= 0:
                loop.remove_writer(sock.fileno())

        client.on_socket_register_write = register
        client.on_socket_unregister_write = unregister
        loop.remove_writer(fd)  # whatever aiomqtt left there
        if client._registered_write:
            loop.add_writer(fd, self.loop_write)

    @property
    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def dead(self) -> bool:
        """The connection is gone (paho closed the socket)."""
        return self._client._sock is not self._sock

    @property
    def busy(self) -> bool:
        """A batch (or a PINGREQ) is still partly unsent: frame nothing more until it is."""
        return self._batch is not None or self._pinging

    @property
    def unsent(self) -> tuple[Token, int] | None:
        """The batch whose bytes have not all reached the kernel (after a loss: never will),
        and how many of its messages, in framing order, did."""
        return None if self._batch is None else (self._batch, self._done)

    # --- writing -------------------------------------------------------------------------
    def publish(self, payload: bytes, mid: int) -> None:
        """Frame one PUBLISH (`mid` is ignored at QoS 0); `send` writes it."""
        if len(payload) != self._head_for:
            extra = 2 if self._qos else 0
            self._head = (
                bytes([paho.PUBLISH | self._qos << 1])
                + remaining_length(len(self._topic) + extra + len(payload))
                + self._topic
            )
            self._head_for = len(payload)
        parts = self._parts
        parts.append(self._head)
        if self._qos:
            parts.append(mid.to_bytes(2, "big"))
            self.outstanding += 1
        parts.append(payload)
        self.size += len(self._head) + len(payload) + (2 if self._qos else 0)
        self._ends.append(self.size)

    def _publish5(self, payload: bytes, mid: int) -> None:
        """`publish` for MQTT 5: the properties block after the packet id."""
        if len(payload) != self._head_for:
            self._head5(len(payload))
        parts = self._parts
        parts.append(self._head)
        if self._qos:
            parts.append(mid.to_bytes(2, "big"))
            self.outstanding += 1
        parts.append(self._properties)  # type: ignore[arg-type]  # not None here
        parts.append(payload)
        self.size += self._framing + len(payload)
        self._ends.append(self.size)

    def _head5(self, size: int) -> None:
        """The fixed header and topic of an MQTT 5 PUBLISH of `size` bytes of payload, and the
        bytes it adds to the payload. With a topic alias, the first one has the topic (and
        sets the alias) and is for one message only; the later ones have an empty topic."""
        assert self._properties is not None
        topic = self._topic
        self._head_for = size
        if self._full_topic is not None:
            topic, self._full_topic = self._full_topic, None
            self._topic, self._head_for = b"\x00\x00", -1  # the next message: a head again
        extra = (2 if self._qos else 0) + len(self._properties)
        self._head = (
            bytes([paho.PUBLISH | self._qos << 1])
            + remaining_length(len(topic) + extra + size)
            + topic
        )
        self._framing = len(self._head) + extra

    def send(self, batch: Token) -> None:
        """Write what was framed since the last `send` as one batch.

        A message counts once all its bytes are in the kernel: ``on_sent(batch, start, stop)``
        says that messages ``start`` to ``stop`` (in framing order) just got there: all of
        them at once now, the usual case, or in steps as the writer callback finishes them.
        """
        if self._batch is not None:
            raise RuntimeError("send() while the previous batch is unsent")
        self._unsent = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        self._batch, self._batch_ends, self._ends = batch, self._ends, []
        self._batch_size, self._done = len(self._unsent), 0
        self._flush()

    def _progress(self, unwritten: int) -> None:
        """Report the messages a partial write completed (rare: the socket was full)."""
        done = bisect.bisect_right(self._batch_ends, self._batch_size - unwritten)
        if done > self._done and self._batch is not None:
            start, self._done = self._done, done
            self._client._last_msg_out = time.monotonic()
            self._on_sent(self._batch, start, done)

    def _lost(self, message: str, exc: OSError) -> MQTTErrorCode:
        """Through paho's error path: the socket is closed and ``on_disconnect`` runs."""
        self._client._easy_log(paho.MQTT_LOG_ERR, message, exc)
        return self._client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)

    def _flush(self) -> None:
        client = self._client
        own = client._out_packet
        if own and own[0]["pos"]:  # paho is midway through a packet of its own: finish it
            paho.Client.loop_write(client)
            if own or self.dead:
                return
        data = self._unsent
        while data:
            try:
                # Whole when it fits, the usual case: no view, no slice.
                written = self._tls.write(
                    data if len(data) <= _WRITE_CHUNK else memoryview(data)[:_WRITE_CHUNK]
                )
            except _NOT_NOW:
                self._unsent = data
                self._progress(len(data))
                client._call_socket_register_write()
                return
            except OSError as exc:
                self._unsent = data
                self._progress(len(data))
                self._lost("failed to send on socket: %s", exc)
                return
            data = memoryview(data)[written:] if written < len(data) else b""
        self._unsent = data
        batch, self._batch = self._batch, None
        if batch is not None:
            client._last_msg_out = time.monotonic()
            self._on_sent(batch, self._done, len(self._batch_ends))
        if own:
            paho.Client.loop_write(client)  # registers and unregisters for itself
        elif client._registered_write:
            client._call_socket_unregister_write()

    def loop_write(self) -> MQTTErrorCode:
        """The writer callback: finish our batch, then paho's own packets."""
        if self.dead:
            return paho.MQTT_ERR_NO_CONN
        was_busy = self.busy
        if not was_busy and not self._client._out_packet:
            self.idle_writes += 1
        self._flush()
        if self._pinging and not self._unsent:
            self._pinging = False
        if was_busy and not self.busy and not self.dead:
            self._on_drained()
        return _OK

    def keep_alive(self) -> None:
        """paho's timers: a PINGREQ after a keep-alive without traffic, a close when its
        PINGRESP never came. The usual case, an answered connection due for a PINGREQ with
        nothing else to write, is done here as paho would (`_ping`); the rest by paho's own
        timers. A PINGREQ is written at once, not by a writer callback (an idle fleet's whole
        cost is its PINGREQs: a writer added and removed, and a loop pass, each)."""
        if self.dead:
            return
        client = self._client
        keepalive = client.keepalive
        if client._ping_t == 0 and keepalive and client.is_connected():
            now = time.monotonic()
            if (
                now - client._last_msg_out < keepalive
                and now - client._last_bytes_received < keepalive
            ):
                return  # not due: traffic moved it on
            if not self.busy and not client._out_packet:
                self._ping(now)
                return
        self._writing_now = not self.busy  # a busy Wire's writer is registered already
        try:
            client.loop_misc()
        finally:
            self._writing_now = False
        if client._out_packet and not self.busy and not self.dead:
            self._flush()
            if client._out_packet and not self.dead:  # the socket took only part: the writer
                self._loop.add_writer(self.fileno, self.loop_write)

    def _ping(self, now: float) -> None:
        """Write a PINGREQ and note it where paho's timers look (paho's `_check_keepalive`):
        the PINGRESP is then awaited for a keep-alive, as paho awaits its own."""
        client = self._client
        self._unsent = _PINGREQ
        self._pinging = True
        self._flush()  # what the socket does not take, the writer finishes (`loop_write`)
        if not self._unsent:
            self._pinging = False
        if self.dead:
            return
        client._ping_t = now
        client._last_msg_out = now
        client._last_bytes_received = now

    @property
    def keepalive_due(self) -> float:
        """When paho's timers next have something to do (monotonic seconds, paho's clock): a
        keep-alive after the last packet either way; a PINGREQ's answer is due by then too."""
        client = self._client
        return min(client._last_msg_out, client._last_bytes_received) + client.keepalive

    # --- reading -------------------------------------------------------------------------
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """The reader callback: read every TLS record there is, then handle the packets.

        The broker sends each PUBACK in its own record and one ``recv()`` returns one record.
        With one message in flight a single read does (the poller calls again if more came).
        """
        client = self._client
        if self.dead:
            return paho.MQTT_ERR_NO_CONN
        tls, received, buffer = self._tls, self._received, _READ_BUFFER
        many = self.outstanding > 1
        failure: OSError | None = None
        closed = False
        for _ in range(_READS_PER_EVENT):
            try:
                count = tls.read(_READ_SIZE, buffer)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                client._call_socket_register_write()
                break
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                count = 0
            except OSError as exc:
                failure = exc
                break
            if not count:
                closed = True
                break
            received += _READ_VIEW[:count]
            if not many and not tls.pending():
                break
        client._last_bytes_received = time.monotonic()
        if failure is not None or closed:
            # What came before the close still counts (PUBACKs the broker sent, then left).
            self._handle(received)
            if self.dead:
                return paho.MQTT_ERR_NO_CONN
            if failure is not None:
                return self._lost("failed to receive on socket: %s", failure)
            return client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
        if len(received) == 4 and received[0] == _PUBACK and received[1] == 2:
            # Exactly one PUBACK, the usual read at paced rates. Through `_handle` a message
            # costs ~1.5 µs more (measured in-process, publish and PUBACK: 16-17 against 18-19).
            mid = received[2] << 8 | received[3]
            received.clear()
            if self.outstanding:
                self.outstanding -= 1
            self._on_ack(mid)
            return _OK
        return self._handle(received)

    def _handle(self, buf: bytearray) -> MQTTErrorCode:
        on_ack = self._on_ack
        pos, size, acks = 0, len(buf), 0
        rc = _OK
        while size - pos >= 2:
            command = buf[pos]
            if command == _PUBACK and buf[pos + 1] == 2:
                if size - pos < 4:
                    break
                acks += 1
                on_ack(buf[pos + 2] << 8 | buf[pos + 3])
                pos += 4
                continue
            if command == _PINGRESP and buf[pos + 1] == 0:
                self._client._ping_t = 0  # no longer waiting for it (paho's `_handle_pingresp`)
                pos += 2
                continue
            length, header = 0, 1
            while True:  # the remaining length: 1-4 bytes
                if pos + header >= size:
                    length = -1
                    break
                digit = buf[pos + header]
                length |= (digit & 0x7F) << (7 * (header - 1))
                header += 1
                if not digit & 0x80:
                    break
                if header > 4:
                    rc = paho.MQTT_ERR_PROTOCOL
                    break
            if rc or length < 0 or pos + header + length > size:
                break
            if command == _PUBACK and length > 2:  # MQTT 5: a reason code, maybe properties
                acks += 1
                self._acked5(buf[pos + header : pos + header + length])
                pos += header + length
                continue
            rc = self._to_paho(command, buf[pos + header : pos + header + length])
            pos += header + length
            if rc or self.dead:
                break
        self.outstanding = max(0, self.outstanding - acks)
        del buf[:pos]
        if rc and not self.dead:
            return self._client._loop_rc_handle(rc)
        return _OK

    def _acked5(self, body: bytearray) -> None:
        """An MQTT 5 PUBACK with a reason code: 0x80 or more refused the message."""
        mid, code = puback(body)
        if code < FAILED or self._on_refused is None:
            self._on_ack(mid)
        else:
            self._on_refused(mid, code)

    def _to_paho(self, command: int, body: bytearray) -> MQTTErrorCode:
        """Let paho handle a packet the hot path does not know, as its own reader would."""
        client = self._client
        client._in_packet = _in_packet(command, body)
        try:
            rc = client._packet_handle()
        except MalformedPacket as exc:
            client._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = paho.MQTT_ERR_PROTOCOL
        client._in_packet = _in_packet(0, bytearray())
        return rc


class Readers:
    """The publishing sockets of one event loop, in one epoll set of their own, read together.

    At 500 things x 10/s, reading each PUBACK when its socket becomes readable means 5,000
    event-loop wake-ups a second. While the scheduler ticks (every millisecond or so), it calls
    `read` once per tick instead: measured, 39.7-40.6 % of one core against 43.8-43.9 % (two
    alternated 20 s rounds). PUBACKs are then read up to one tick late, and their measured
    latency includes that (p50 0.51-0.56 ms against 0.46-0.47 ms on loopback). Otherwise the
    set is `watching`: the loop reads it as soon as any socket is readable.
    """

    def __init__(self, *, epoll: bool = HAVE_EPOLL) -> None:
        self._use_epoll = epoll
        self._epoll: select.epoll | None = None  # made on first use, on the running loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wires: dict[int, Wire[Any]] = {}
        self._watching = False

    def add(self, wire: Wire[Any]) -> None:
        """Read `wire` here from now on, instead of through aiomqtt's reader callback (which
        aiomqtt registered to read the CONNACK, and removes by descriptor on close). Without
        epoll, the loop reads each socket on its own readiness."""
        if not self._use_epoll:
            loop = asyncio.get_running_loop()
            loop.remove_reader(wire.fileno)
            loop.add_reader(wire.fileno, wire.loop_read)
            return
        if self._epoll is None:
            self._loop = asyncio.get_running_loop()
            self._epoll = select.epoll()
            self.watching = True
        assert self._loop is not None
        fd = wire.fileno
        self._loop.remove_reader(fd)
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:  # a reused descriptor still registered: now it is this socket
            self._epoll.modify(fd, select.EPOLLIN)
        self._wires[fd] = wire

    @property
    def watching(self) -> bool:
        return self._watching

    @watching.setter
    def watching(self, on: bool) -> None:
        """On: read as soon as a socket is readable. Off: only when `read` is called."""
        if on == self._watching or self._epoll is None:
            return
        assert self._loop is not None
        if on:
            self._loop.add_reader(self._epoll.fileno(), self.read)
        else:
            self._loop.remove_reader(self._epoll.fileno())
        self._watching = on

    def read(self) -> None:
        """Read every socket that has something to read."""
        if self._epoll is None:
            return
        wires = self._wires
        for fd, _ in self._epoll.poll(0):
            wire = wires.get(fd)
            if wire is None or wire.loop_read() == paho.MQTT_ERR_NO_CONN:
                # Closed sockets leave the set by themselves: a descriptor still here has
                # its socket open elsewhere (not ours to read).
                self._forget(fd)

    def _forget(self, fd: int) -> None:
        self._wires.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def close(self) -> None:
        """Stop reading (at the end of a run: the connections are closed)."""
        if self._epoll is None:
            return
        self.watching = False
        self._epoll.close()
        self._epoll = None
        self._wires.clear()


class Takeover:
    """The hot path's hold on the publishing connections of one event loop: their Wires,
    their reading (`readers`), and their keep-alive: one pass a second runs paho's timers of
    the connections whose keep-alive falls due (instead of aiomqtt's task per client waking
    every second: an idle 20,000 at keep-alive 30 s is 667 visits a second, not 20,000)."""

    def __init__(self, *, epoll: bool = HAVE_EPOLL) -> None:
        self.readers = Readers(epoll=epoll)
        self._due: dict[int, list[Wire[Any]]] = {}  # whole second -> wires due by then
        self._keeper: asyncio.Task[None] | None = None

    def install(
        self,
        client: aiomqtt.Client,
        topic: str,
        qos: int,
        *,
        on_ack: Callable[[int], None],
        on_sent: Callable[[Token, int, int], None],
        on_drained: Callable[[], None],
        properties: bytes | None = None,
        aliased: bool = False,
        on_refused: Callable[[int, int], None] | None = None,
    ) -> Wire[Token]:
        """Take over a connected client: from now on all its I/O goes through the Wire
        (`properties`, `aliased`, `on_refused`: MQTT 5, see `Wire`)."""
        wire: Wire[Token] = Wire(
            client._client,
            topic,
            qos,
            on_ack=on_ack,
            on_sent=on_sent,
            on_drained=on_drained,
            properties=properties,
            aliased=aliased,
            on_refused=on_refused,
        )
        self.readers.add(wire)
        own_timer = client._misc_task  # aiomqtt's keep-alive task for this client
        if own_timer is not None:
            own_timer.cancel()
        self._schedule(wire, time.monotonic())
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_alive())
        return wire

    def _schedule(self, wire: Wire[Any], now: float) -> None:
        """Visit `wire` in the first pass at or after its keep-alive is due (at the latest
        KEEPALIVE_PASS_S late, as with a visit every pass)."""
        second = math.ceil(max(wire.keepalive_due, now + KEEPALIVE_PASS_S))
        self._due.setdefault(second, []).append(wire)

    async def _keep_alive(self) -> None:
        """paho's timers (a PINGREQ when idle, a PINGRESP that never came) for every live
        connection whose keep-alive is due; a visit finds the next due time (traffic moves it
        on); a connection paho closed leaves."""
        while True:
            await asyncio.sleep(KEEPALIVE_PASS_S)
            self.keep_alive_pass(time.monotonic())

    def keep_alive_pass(self, now: float) -> int:
        """One pass at monotonic time `now`: the connections due by now; how many it visited."""
        visited = 0
        for second in sorted(second for second in self._due if second <= now):
            for wire in self._due.pop(second):
                wire.keep_alive()
                visited += 1
                if not wire.dead:
                    self._schedule(wire, now)
        return visited

    def close(self) -> None:
        """Stop reading and keeping alive (the connections are closed or abandoned)."""
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        self.readers.close()
        self._due.clear()


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under an aiomqtt client."""
    inner: paho.Client = client._client
    return inner


async def enter(client: aiomqtt.Client, sock: ssl.SSLSocket | WebSocket) -> None:
    """aiomqtt's ``__aenter__`` on a socket already connected (TCP and TLS, on the loop): paho
    sends CONNECT on `sock` instead of making its own, so no executor thread, DNS look-up or
    blocking handshake. Waits for CONNACK as aiomqtt does; raises `aiomqtt.MqttError`."""
    inner = paho_client(client)
    inner._create_socket = lambda: sock  # type: ignore[method-assign]
    await client._lock.acquire()
    try:
        client._client_connect()  # paho's connect: no blocking step is left in it
    except OSError as exc:
        client._lock.release()
        raise aiomqtt.MqttError(str(exc)) from None
    try:
        await client._wait_for(client._connected, timeout=None)
    except aiomqtt.MqttError:
        client._lock.release()
        client._connected = asyncio.Future()
        raise
    if client._disconnected.done():
        # Closed between its CONNACK and now (a session takeover): `Link.lost` says so. The
        # error aiomqtt set is read before aiomqtt's reset, or asyncio logs it as never retrieved.
        collect_disconnection(client)
        client._disconnected = asyncio.Future()


def collect_disconnection(client: aiomqtt.Client) -> None:
    """Retrieve aiomqtt's disconnection error so that asyncio does not log it as unhandled."""
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


def abandon(inner: paho.Client) -> None:
    """Close the socket of a connection that never completed, and cut paho off from the event
    loop first: paho's connect may still finish in its executor thread, and its socket
    callbacks must not reach a loop that is closed by then (they would print a traceback)."""
    inner.on_socket_open = None
    inner.on_socket_close = None
    inner.on_socket_register_write = None
    inner.on_socket_unregister_write = None
    with contextlib.suppress(OSError):
        inner._sock_close()
