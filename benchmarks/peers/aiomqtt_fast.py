"""Peer (4, research): the fastest honest publish path we found that keeps aiomqtt 2.x.

aiomqtt still owns each connection: TLS setup, CONNECT/CONNACK, the event-loop reader and
writer callbacks, paho's keep-alive timer and the error path (an exception in a read or write
callback becomes aiomqtt's "disconnected"). What changes is the per-message work:

- ``paho``: publish through ``client._client.publish()`` without awaiting, count PUBACKs in
  paho's ``on_publish``; paho still writes one packet per ``send()`` and reads one TLS record
  (one PUBACK, three ``recv()`` calls) per readiness event.
- ``batch``: as ``paho``, but the PUBLISH packets paho queued are joined into one write.
- ``raw`` (the candidate, the default): PUBLISH packets are framed here from a per-client
  cached header (fixed header + topic), a burst is written with one ``send()``; aiomqtt's
  reader callback calls our ``loop_read``, which reads every available TLS record and parses
  PUBACKs in bulk. Every QoS 1 message is tracked per packet ID until its PUBACK (send time
  kept, so ack latency is exact), at most ``inflight`` per client. A message counts as
  published only once its bytes are in the kernel.
- ``+stamp``: build the JSON payload per message with thing, seq and ts (what elf-async
  sends by default) instead of a constant payload.
- ``+readahead``: OpenSSL read-ahead switched on through ctypes (CPython-internal; research).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import uvloop

from benchmarks.peers._common import (
    NODELAY,
    ClientSpec,
    OpenLoop,
    PeerConfig,
    emit,
    load_config,
    payload,
    percentiles,
    self_cpu,
    tls_context,
    wait_line_async,
)

BURST = 32  # QoS 0: messages per client per loop turn (one write)
WRITE_CHUNK = 1 << 16
OUT_HIGH_WATER = 64 * 1024  # bytes per client in our buffer before waiting for the socket
PUBACK, PINGRESP = 0x40, 0xD0
OK = mqtt.MQTT_ERR_SUCCESS


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


MID_BYTES = tuple(m.to_bytes(2, "big") for m in range(65536))  # 2-byte packet IDs, made once


class FastPath:
    """The per-client publish state that sits on top of one connected aiomqtt client."""

    __slots__ = (
        "ack_times",
        "acked",
        "client",
        "dead",
        "fd",
        "framed",
        "head",
        "head_size",
        "inflight",
        "mid",
        "out",
        "out_size",
        "paho",
        "pending",
        "qos",
        "rbuf",
        "sent",
        "sock",
        "stuck",
        "topic",
        "topic16",
        "waiter",
        "wake_at",
    )

    def __init__(self, client: aiomqtt.Client, topic: str, qos: int, limit: int) -> None:
        self.client = client
        self.paho: mqtt.Client = client._client
        sock = self.paho.socket()
        assert isinstance(sock, ssl.SSLSocket)
        self.sock = sock
        self.fd = sock.fileno()
        self.topic = topic
        encoded = topic.encode()
        self.topic16 = len(encoded).to_bytes(2, "big") + encoded
        self.head = b""
        self.head_size = -1
        self.qos = qos
        self.mid = 0
        self.inflight = 0
        self.framed = 0  # framed so far, maybe still in our buffer
        self.sent = 0  # in the kernel: set when a flush completes, never before
        self.acked = 0
        self.pending: dict[int, float] = {}  # packet ID -> send time, until its PUBACK
        self.ack_times: list[float] | None = None
        self.out: list[bytes] = []
        self.out_size = 0
        self.stuck: bytes | None = None
        self.rbuf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.wake_at = max(1, limit // 2)
        self.dead = False

    # --- install / remove: aiomqtt's callbacks call paho's loop_read/loop_write by name ---
    def install(self) -> None:
        self.paho.loop_read = self.loop_read  # type: ignore[method-assign]
        self.paho.loop_write = self.loop_write  # type: ignore[method-assign]

    def uninstall(self) -> None:
        for name in ("loop_read", "loop_write"):
            self.paho.__dict__.pop(name, None)

    # --- publishing -------------------------------------------------------------------
    def header(self, size: int) -> bytes:
        """Fixed header + topic for a payload of `size` bytes, cached while the size repeats."""
        if size != self.head_size:
            extra = 2 if self.qos else 0
            self.head = (
                bytes([0x30 | self.qos << 1])
                + remaining_length(len(self.topic16) + extra + size)
                + self.topic16
            )
            self.head_size = size
        return self.head

    def publish(self, body: bytes, now: float) -> None:
        """Frame one PUBLISH; it is written by the next `flush()` (one write per burst)."""
        head = self.head if len(body) == self.head_size else self.header(len(body))
        out = self.out
        out.append(head)
        if self.qos:
            mid = self.mid % 65535 + 1
            while mid in self.pending:  # never reuse an ID still in flight
                mid = mid % 65535 + 1
            self.mid = mid
            self.pending[mid] = now
            self.inflight += 1
            out.append(MID_BYTES[mid])
        out.append(body)
        self.out_size += len(head) + len(body) + 2
        self.framed += 1

    def flush(self) -> None:
        """Write everything queued (ours and paho's, e.g. a PINGREQ) in as few sends as we can."""
        paho = self.paho
        if paho._out_packet:
            # Packets paho queued itself (PINGREQ; DISCONNECT is never sent while installed).
            while paho._out_packet:
                packet = paho._out_packet.popleft()
                self.out.append(bytes(packet["packet"][packet["pos"] :]))
        try:
            if self.stuck is not None:
                try:
                    self.sock.send(self.stuck)  # OpenSSL wants the same bytes again
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    self._writable(True)
                    return
                self.stuck = None
            if not self.out:
                self.sent = self.framed
                self._writable(False)
                return
            batch = self.framed
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.out_size = 0
            view = memoryview(data)
            while view:
                chunk = view[:WRITE_CHUNK]
                try:
                    written = self.sock.send(chunk)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    self.stuck = bytes(chunk)
                    rest = bytes(view[len(chunk) :])
                    if rest:
                        self.out.append(rest)
                        self.out_size = len(rest)
                    self._writable(True)
                    return
                view = view[written:]
            self.sent = batch  # every message framed before this flush is in the kernel now
            paho._last_msg_out = time.monotonic()
            self._writable(False)
        except OSError:
            self.dead = True
            raise

    @property
    def blocked(self) -> bool:
        return self.stuck is not None or self.out_size > OUT_HIGH_WATER

    def _writable(self, want: bool) -> None:
        """Ask aiomqtt's writer callback (which calls our loop_write) only when a send blocked."""
        if want:
            self.paho._call_socket_register_write()
        elif self.paho._registered_write:
            self.paho._call_socket_unregister_write()

    def loop_write(self) -> int:
        self.flush()
        if self.stuck is None and not self.out:
            self.wake()
        return OK

    # --- reading PUBACKs in bulk ----------------------------------------------------------
    def loop_read(self, max_packets: int = 1) -> int:
        sock = self.sock
        buf = self.rbuf
        # One recv() returns one TLS record, and the broker sends each PUBACK in its own
        # record: with many in flight, read until the socket is empty instead of once per
        # readiness event. With one in flight (paced), one read: the poller is level-triggered
        # and calls again if more arrived, which saves a failing read() per PUBACK.
        many = self.inflight > 1
        for _ in range(4096):
            try:
                data = sock.recv(1 << 18)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                self._writable(True)
                break
            if not data:
                self.dead = True
                raise ConnectionError("connection closed by the broker")
            buf += data
            if not many and not sock.pending():  # pending: bytes OpenSSL holds, poller can't see
                break
        now = time.monotonic()
        self.paho._last_bytes_received = now
        pos, size = 0, len(buf)
        pending = self.pending
        acks = 0
        ack_times = self.ack_times
        while size - pos >= 2:
            command = buf[pos]
            length = buf[pos + 1]
            header = 2
            if length & 0x80:  # multi-byte remaining length: not a PUBACK
                length, mult = length & 0x7F, 128
                complete = False
                while pos + header < size:
                    byte = buf[pos + header]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    header += 1
                    if not byte & 0x80:
                        complete = True
                        break
                if not complete:
                    break
            end = pos + header + length
            if end > size:
                break
            if command == PUBACK:
                sent_at = pending.pop((buf[pos + 2] << 8) | buf[pos + 3], None)
                if sent_at is not None:
                    acks += 1
                    if ack_times is not None:
                        ack_times.append(now - sent_at)
            elif command == PINGRESP:
                self.paho._ping_t = 0
            pos = end
        if pos:
            del buf[:pos]
        if acks:
            self.acked += acks
            self.inflight -= acks
            if self.inflight <= self.wake_at:
                self.wake()
        return OK

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class PahoPath:
    """Variants ``paho`` and ``batch``: paho frames and sends; we only skip aiomqtt's awaits."""

    def __init__(
        self, client: aiomqtt.Client, topic: str, qos: int, limit: int, *, batch: bool
    ) -> None:
        self.client = client
        self.paho: mqtt.Client = client._client
        self.topic = topic
        self.qos = qos
        self.inflight = 0
        self.sent = 0
        self.acked = 0
        self.dead = False
        self.wake_at = max(1, limit // 2)
        self.waiter: asyncio.Future[None] | None = None
        self.ack_times: list[float] | None = None
        self._original_on_publish = self.paho.on_publish
        self._batch = batch

    def install(self) -> None:
        def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
            if self.qos:
                self.acked += 1
                self.inflight -= 1
                if self.inflight <= self.wake_at:
                    self.wake()

        self.paho.on_publish = on_publish
        if self._batch:
            original: Callable[[], int] = self.paho._packet_write
            out = self.paho._out_packet

            def packet_write() -> int:
                # Join the not-yet-attempted PUBLISH packets behind the head into one packet.
                if len(out) > 2:
                    head = out.popleft()
                    joined = bytearray()
                    keep = []
                    while out:
                        packet = out.popleft()
                        if (packet["command"] & 0xF0) == mqtt.PUBLISH and packet["pos"] == 0:
                            joined += packet["packet"]
                        else:
                            keep.append(packet)
                    out.append(head)
                    out.append(
                        {"command": mqtt.PUBLISH, "mid": 0, "qos": 1, "pos": 0,
                         "to_process": len(joined), "packet": joined, "info": None}
                    )  # fmt: skip
                    out.extend(keep)
                return int(original())

            self.paho._packet_write = packet_write  # type: ignore[method-assign]

    def uninstall(self) -> None:
        self.paho.on_publish = self._original_on_publish
        self.paho.__dict__.pop("_packet_write", None)

    @property
    def framed(self) -> int:
        return self.sent

    def publish(self, body: bytes, now: float) -> None:
        info = self.paho.publish(self.topic, body, self.qos)
        if info.rc != OK:
            self.dead = True
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self.sent += 1
        if self.qos:
            self.inflight += 1

    def flush(self) -> None:
        return None  # paho's writer callback (aiomqtt's add_writer) does the writing

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


Path = FastPath | PahoPath


def enable_read_ahead(context: ssl.SSLContext) -> None:
    """OpenSSL read-ahead on a Python SSLContext (not exposed by the ssl module).

    Without it SSL_read makes two read() calls per TLS record (header, body); with it one
    read() fills a buffer with many records (PUBACKs). CPython-internal: the SSL_CTX pointer
    follows PyObject_HEAD in PySSLContext. Research only.
    """
    import ctypes
    import ctypes.util

    libssl = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
    libssl.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    libssl.SSL_CTX_ctrl.restype = ctypes.c_long
    ctx_ptr = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    ssl_ctrl_set_read_ahead = 41
    libssl.SSL_CTX_ctrl(ctx_ptr, ssl_ctrl_set_read_ahead, 1, None)


async def connect(
    config: PeerConfig, spec: ClientSpec, gate: asyncio.Semaphore, stack: contextlib.AsyncExitStack
) -> aiomqtt.Client | None:
    async with gate:
        context = tls_context(config, spec)
        if "+readahead" in config.variant:
            enable_read_ahead(context)
        client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=spec.id,
            tls_context=context,
            keepalive=60,
            timeout=30,
            max_inflight_messages=config.inflight,
            socket_options=[NODELAY],
        )
        try:
            return await stack.enter_async_context(client)
        except aiomqtt.MqttError:
            return None


def stamper(thing: str) -> Callable[[int], bytes]:
    """elf-async's default payload: the message plus thing, seq and send time (ms)."""
    prefix = json.dumps({"msg": "IoT ELF Hello", "thing": thing})[:-1].encode()

    def make(seq: int) -> bytes:
        return b'%s, "seq": %d, "ts": %d}' % (prefix, seq, time.time_ns() // 1_000_000)

    return make


async def run() -> None:
    config = load_config()
    variant = config.variant or "raw"
    stamp = "+stamp" in variant
    mode = variant.split("+")[0]
    qos, limit = config.qos, config.inflight
    async with contextlib.AsyncExitStack() as stack:
        gate = asyncio.Semaphore(config.connect_concurrency)
        results = await asyncio.gather(*(connect(config, s, gate, stack) for s in config.clients))
        clients = [c for c in results if c is not None]
        paths: list[Path] = []
        for client in clients:
            topic = config.topic(client.identifier)
            path: Path = (
                FastPath(client, topic, qos, limit)
                if mode == "raw"
                else PahoPath(client, topic, qos, limit, batch=mode == "batch")
            )
            path.install()
            paths.append(path)
            stack.callback(path.uninstall)
        emit("READY", {"connected": len(clients), "failed": len(results) - len(clients)})
        if await wait_line_async() != "GO":
            return
        cpu0 = self_cpu()
        body = payload(config.payload_size)
        start = time.monotonic()
        end = start + config.seconds
        lags: list[float] = []
        if config.paced:
            for path in paths:
                path.ack_times = []
            await paced(paths, config.rate, start, end, body, lags, stamp, limit)
        else:
            schedules = OpenLoop.fleet(start, config.rate, len(paths))
            await asyncio.gather(
                *(
                    flat_out(p, s, body, end, qos, stamp, limit)
                    for p, s in zip(paths, schedules, strict=True)
                )
            )
        stop_at = time.monotonic()
        at_stop = sum(p.sent for p in paths)  # in the kernel by the stop
        cpu_at_stop = self_cpu() - cpu0
        # What is still in our buffers is not published until the kernel has it: flush it
        # (at QoS 0 we frame faster than the broker reads) and count that time too.
        flush_end = time.monotonic() + config.drain_seconds
        while time.monotonic() < flush_end and any(p.sent < p.framed for p in paths):
            for path in paths:
                if isinstance(path, FastPath) and path.sent < path.framed and path.stuck is None:
                    path.flush()
            await asyncio.sleep(0.005)
        publish_end = time.monotonic()
        published = sum(p.sent for p in paths)
        drain_end = publish_end + config.drain_seconds
        while qos and time.monotonic() < drain_end and sum(p.acked for p in paths) < published:  # noqa: ASYNC110 - a poll of many counters, after the timed phase
            await asyncio.sleep(0.01)
        done = time.monotonic()
        ack_times = [t for p in paths for t in (p.ack_times or [])]
        emit(
            "RESULT",
            {
                "published": published if config.paced else at_stop,
                "sent": published,
                "acked": sum(p.acked for p in paths) if qos else published,
                "publish_seconds": (publish_end if config.paced else stop_at) - start,
                "drain_seconds": done - publish_end,
                "self_cpu": self_cpu() - cpu0,
                "cpu_at_stop": cpu_at_stop,
                "lag_ms": percentiles(lags),
                "ack_ms": percentiles(ack_times),
                "extra": {
                    "variant": variant,
                    "dead": sum(p.dead for p in paths),
                    "unflushed": sum(p.framed - p.sent for p in paths),
                },
            },
        )
        await wait_line_async()


async def flat_out(
    path: Path, schedule: OpenLoop, body: bytes, end: float, qos: int, stamp: bool, limit: int
) -> None:
    """What is due, as fast as the connection allows: bursts, one write per burst, ≤ `limit`
    at QoS 1 (the open loop of every peer, at a rate above reach)."""
    make = stamper(path.client.identifier) if stamp else None
    seq = 0
    while not path.dead:
        now = time.monotonic()
        if now >= end:
            return
        owed = schedule.owed(now)
        if owed <= 0:
            await asyncio.sleep(min(schedule.next_due(), end) - now)
            continue
        if qos:
            room = limit - path.inflight
            if room <= 0:
                await path.wait()
                continue
        else:
            room = BURST
            if isinstance(path, PahoPath):
                if path.paho.want_write() and len(path.paho._out_packet) > 2 * BURST:
                    await asyncio.sleep(0.001)  # paho's writer callback drains the queue
                    continue
            elif path.blocked:
                await path.wait()  # woken by loop_write once the socket took it all
                continue
        room = min(room, owed)
        schedule.sent += room
        for _ in range(room):
            if make is not None:
                seq += 1
                path.publish(make(seq), now)
            else:
                path.publish(body, now)
        path.flush()
        await asyncio.sleep(0)


async def paced(
    paths: list[Path],
    rate: float,
    start: float,
    end: float,
    body: bytes,
    lags: list[float],
    stamp: bool,
    limit: int,
) -> None:
    """Open loop: message k of client i is due at start + phase_i + k/rate; lag is recorded."""
    interval = 1.0 / rate
    count = len(paths)
    makers = [stamper(p.client.identifier) if stamp else None for p in paths]
    seqs = [0] * count
    heap = [(start + interval * i / count, i) for i in range(count)]
    heapq.heapify(heap)
    dirty: list[Path] = []
    while heap:
        now = time.monotonic()
        due, index = heap[0]
        if due >= end:
            break
        if due > now:
            for path in dirty:
                path.flush()
            dirty.clear()
            await asyncio.sleep(due - now)
            continue
        heapq.heappop(heap)
        path = paths[index]
        if path.dead:
            continue
        if path.inflight >= limit:
            heapq.heappush(heap, (due, index))  # still due: the lag will show the wait
            await path.wait()
            continue
        lags.append(now - due)
        seqs[index] += 1
        make = makers[index]
        path.publish(make(seqs[index]) if make is not None else body, now)
        dirty.append(path)
        heapq.heappush(heap, (due + interval, index))
    for path in dirty:
        path.flush()


if __name__ == "__main__":
    uvloop.run(run())
