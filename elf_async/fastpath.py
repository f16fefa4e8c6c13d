"""A publisher connection's own socket I/O, under its aiomqtt client.

paho writes one PUBLISH per ``send()`` and reads one TLS record (one PUBACK, three ``recv()``
calls) per readiness event: measured, that caps any paho-based publisher well below gmqtt
(benchmarks/NOTES.md, findings 1-3). A `Wire` takes over the two socket callbacks of a
connected client (aiomqtt's reader and writer callbacks call paho's ``loop_read`` and
``loop_write`` by name):

- writing: PUBLISH packets are framed here from a cached fixed header and topic, and what one
  pump framed goes out in one ``send()``. What the socket does not take is kept and written
  when it becomes writable (registered through paho, so aiomqtt's writer callback runs);
  paho's own packets (PINGREQ, DISCONNECT) are written by paho, never inside one of ours.
  A batch counts as sent only once all its bytes are in the kernel.
- reading: every TLS record available is read at once and PUBACKs are parsed here; any other
  packet (PINGRESP, ...) is handed to paho's own packet handler.

All publishing on such a link goes through its Wire, so paho allocates no message IDs there
and the caller's IDs cannot collide with paho's. Errors go through paho's own error path
(``_loop_rc_handle``): the socket is closed and ``on_disconnect`` runs, exactly as when paho
itself fails a read or a write, so aiomqtt and `Link.lost` see a lost connection as before.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

Token = TypeVar("Token")

PAHO_INTERNALS = (
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
    "_easy_log",
)
"""paho-mqtt private attributes a Wire relies on (tests/test_fastpath_contract.py checks them)."""

_PUBACK = 0x40
_WRITE_CHUNK = 1 << 16  # a write OpenSSL refused is retried with the same bytes: keep them few
_READ_SIZE = 1 << 18
_READS_PER_EVENT = 64  # bounds one reader callback, so one busy connection cannot hog the loop
_NOT_NOW = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
_OK = paho.MQTT_ERR_SUCCESS


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


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


class Wire(Generic[Token]):
    """PUBLISH out and PUBACK in for one connected client; `Token` identifies a batch."""

    def __init__(
        self,
        client: paho.Client,
        topic: str,
        qos: int,
        *,
        on_ack: Callable[[int], None],
        on_sent: Callable[[Token], None],
        on_drained: Callable[[], None],
    ) -> None:
        sock = client._sock
        if not isinstance(sock, ssl.SSLSocket):
            raise TypeError("a Wire needs a connected TLS client")
        self._client = client
        self._sock = sock
        encoded = topic.encode()
        self._topic = len(encoded).to_bytes(2, "big") + encoded
        self._qos = qos
        self._head = b""  # fixed header + topic for payloads of `_head_for` bytes
        self._head_for = -1
        self._parts: list[bytes] = []  # framed, not yet handed to `send`
        self.size = 0  # bytes in `_parts`
        self._unsent = memoryview(b"")
        self._batch: Token | None = None  # the batch `_unsent` belongs to
        self._received = bytearray()
        self.outstanding = 0  # QoS 1 messages framed and not yet acknowledged
        self._on_ack = on_ack
        self._on_sent = on_sent
        self._on_drained = on_drained
        client.loop_read = self.loop_read  # type: ignore[method-assign]
        client.loop_write = self.loop_write  # type: ignore[method-assign]

    @property
    def dead(self) -> bool:
        """The connection is gone (paho closed the socket)."""
        return self._client._sock is not self._sock

    @property
    def busy(self) -> bool:
        """A batch is still partly unsent: frame nothing more until it is."""
        return self._batch is not None

    @property
    def unsent(self) -> Token | None:
        """The batch whose bytes have not all reached the kernel (after a loss: never will)."""
        return self._batch

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
        self.size += len(self._head) + len(payload)

    def send(self, batch: Token) -> None:
        """Write what was framed since the last `send` as one batch; `on_sent(batch)` once
        it is all in the kernel (now, or later from the writer callback)."""
        if self._batch is not None:
            raise RuntimeError("send() while the previous batch is unsent")
        data = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        self._unsent = memoryview(data)
        self._batch = batch
        self._flush()

    def _flush(self) -> None:
        client = self._client
        own = client._out_packet
        if own and own[0]["pos"]:  # paho is midway through a packet of its own: finish it
            paho.Client.loop_write(client)
            if own:
                return
        data = self._unsent
        while data:
            try:
                written = self._sock.send(data[:_WRITE_CHUNK])
            except _NOT_NOW:
                self._unsent = data
                client._call_socket_register_write()
                return
            except OSError as exc:
                client._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", exc)
                client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
                return
            data = data[written:]
        self._unsent = data
        batch, self._batch = self._batch, None
        if batch is not None:
            client._last_msg_out = time.monotonic()
            self._on_sent(batch)
        if own:
            paho.Client.loop_write(client)  # registers and unregisters for itself
        elif client._registered_write:
            client._call_socket_unregister_write()

    def loop_write(self) -> MQTTErrorCode:
        """The writer callback: finish our batch, then paho's own packets."""
        if self.dead:
            return paho.MQTT_ERR_NO_CONN
        was_busy = self.busy
        self._flush()
        if was_busy and not self.busy and not self.dead:
            self._on_drained()
        return _OK

    # --- reading -------------------------------------------------------------------------
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """The reader callback: read every TLS record there is, then handle the packets.

        The broker sends each PUBACK in its own record and one ``recv()`` returns one record.
        With one message in flight a single read does (the poller calls again if more came).
        """
        client = self._client
        if self.dead:
            return paho.MQTT_ERR_NO_CONN
        sock, received = self._sock, self._received
        many = self.outstanding > 1
        for _ in range(_READS_PER_EVENT):
            try:
                data = sock.recv(_READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                client._call_socket_register_write()
                break
            except OSError as exc:
                client._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", exc)
                return client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
            if not data:
                return client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
            received += data
            if not many and not sock.pending():
                break
        client._last_bytes_received = time.monotonic()
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
            rc = self._to_paho(command, buf[pos + header : pos + header + length])
            pos += header + length
            if rc or self.dead:
                break
        self.outstanding = max(0, self.outstanding - acks)
        del buf[:pos]
        if rc and not self.dead:
            return self._client._loop_rc_handle(rc)
        return _OK

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
