"""A minimal MQTT 3.1.1 broker for one client, over real TLS, in a thread: it records every
packet the client sends and answers as a broker would (CONNACK, PUBACK, PINGRESP), so a test
can see exactly what crossed the wire. Not elf-async code: the contract tests' witness."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from elf_async.controlplane.certs import generate_key, key_pem
from elf_async.files import write_private, write_public
from support.mqtt import FixtureCA

CONNECT, PUBLISH, PINGREQ, DISCONNECT = 0x10, 0x30, 0xC0, 0xE0
EOF = -1  # recorded when the client closes the connection


@dataclass
class Packet:
    command: int  # the fixed header's first byte (type and flags), or EOF
    body: bytes


@dataclass
class MqttPeer:
    """The broker side of one TLS connection; `port` to connect to, `packets` as received."""

    port: int
    ca_file: Path
    answer_pings: bool = True
    close_after_acks: int = 0  # hold PUBACKs until this many, send them at once, then close
    close_after_connack: bool = False  # answer CONNECT, then close at once (a takeover's race)
    closed: threading.Event = field(default_factory=threading.Event)
    packets: list[Packet] = field(default_factory=list)
    _held: list[bytes] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _conn: ssl.SSLSocket | None = None

    def kinds(self) -> list[int]:
        """The packet types received so far (PUBLISH flags masked off)."""
        with self._changed:
            return self._kinds_locked()

    def wait_for(self, what: str, predicate: Callable[[list[int]], bool], timeout: float) -> None:
        """Block until `predicate(kinds)` holds; fail with `what` after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._kinds_locked()), timeout):
                raise AssertionError(f"{what}: saw only {self._kinds_locked()}")

    def _kinds_locked(self) -> list[int]:
        return [p.command if p.command == EOF else p.command & 0xF0 for p in self.packets]

    def send(self, data: bytes) -> None:
        assert self._conn is not None
        self._conn.sendall(data)

    def drop(self) -> None:
        """The broker goes away: close the connection from this side."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()

    def _record(self, command: int, body: bytes) -> None:
        with self._changed:
            self.packets.append(Packet(command, body))
            self._changed.notify_all()

    def serve(self, listener: socket.socket, context: ssl.SSLContext) -> None:
        """Accept one client and answer it until it or `drop` closes the connection."""
        raw, _ = listener.accept()
        listener.close()
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self._record(EOF, b"")
            return
        self._conn = conn
        try:
            while True:
                head = conn.recv(1)
                if not head:
                    break
                length, shift = 0, 0
                while True:
                    digit = conn.recv(1)[0]
                    length |= (digit & 0x7F) << shift
                    shift += 7
                    if not digit & 0x80:
                        break
                body = b""
                while len(body) < length:
                    chunk = conn.recv(length - len(body))
                    if not chunk:
                        raise ConnectionError
                    body += chunk
                command = head[0]
                self._record(command, body)
                self._answer(conn, command, body)
        except (OSError, ConnectionError, IndexError):
            pass
        self._record(EOF, b"")

    def _answer(self, conn: ssl.SSLSocket, command: int, body: bytes) -> None:
        kind, qos = command & 0xF0, (command >> 1) & 3
        if kind == CONNECT:
            conn.sendall(b"\x20\x02\x00\x00")
            if self.close_after_connack:
                self.drop()
        elif kind == PUBLISH and qos == 1:
            topic_length = int.from_bytes(body[:2], "big")
            puback = b"\x40\x02" + body[2 + topic_length : 4 + topic_length]
            if not self.close_after_acks:
                conn.sendall(puback)
                return
            self._held.append(puback)
            if len(self._held) == self.close_after_acks:
                conn.sendall(b"".join(self._held))
                self.drop()
                self.closed.set()
        elif kind == PINGREQ and self.answer_pings:
            conn.sendall(b"\xd0\x00")


@contextmanager
def mqtt_peer(
    ca: FixtureCA,
    directory: Path,
    *,
    answer_pings: bool = True,
    close_after_acks: int = 0,
    close_after_connack: bool = False,
) -> Iterator[MqttPeer]:
    """An `MqttPeer` on a free 127.0.0.1 port whose certificate the test CA signed."""
    key = generate_key("ec")
    key_file, cert_file = directory / "peer-server.key", directory / "peer-server.crt"
    write_private(key_file, key_pem(key))
    write_public(cert_file, ca.ca.sign(key.public_key(), "127.0.0.1", server_names=("127.0.0.1",)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = MqttPeer(
        listener.getsockname()[1],
        ca.cert_file,
        answer_pings=answer_pings,
        close_after_acks=close_after_acks,
        close_after_connack=close_after_connack,
    )
    thread = threading.Thread(target=peer.serve, args=(listener, context), daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        peer.drop()
        listener.close()
        thread.join(10)
