"""MQTT over mutual TLS: the TLS context AWS IoT needs, and connections that say why they fail.

Each connection is an aiomqtt 2.x client (paho underneath, driven by the event loop). Two
things aiomqtt does not give are added here, in one place, through its paho client:
- the real reason of a refused connection: a TLS alert from the broker (unknown CA, no
  certificate) reaches aiomqtt only as "Operation timed out", while paho logs it;
- a hot path without a per-message await: `send` frames PUBLISH packets and reads PUBACKs
  itself on the connection's socket (elf_async.dataplane.takeover; aiomqtt's ``publish()`` costs
  ~150-200 µs, paho's own ``publish()`` and reader cap QoS 1 far lower than that path);
- a cheap connect: TCP and TLS on the event loop with contexts shared between things
  (`ClientTls`), a shared identity's TLS session resumed, and paho handed the socket made
  (aiomqtt runs paho's blocking connect, DNS and handshake included, in an executor thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from elf_async.dataplane.mqtt5 import connack_refusal, topic_alias_maximum
from elf_async.dataplane.takeover import abandon, collect_disconnection, enter, paho_client
from elf_async.dataplane.websocket import WebSocket, WebSocketRefused, upgrade
from elf_async.errors import UsageError
from elf_async.fdlimit import refused

DEFAULT_PORT = 8883
ALPN_PORT = 443
AWS_ALPN = "x-amzn-mqtt-ca"  # MQTT with X.509 on port 443
KEEPALIVE = 60  # seconds; AWS clamps keep-alive to 30-1200 s
# Nagle off: a due message is written at once, not held until the previous segment's ACK
# (paho leaves Nagle on). Set on each socket before it connects (`open_tls`).
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
_PAHO_LOGGER = logging.getLogger("elf_async.paho")
_PAHO_LOGGER.setLevel(logging.CRITICAL)  # its errors are captured and explained instead


def debug_paho(enabled: bool) -> None:
    """Let paho's own log through (with --verbose)."""
    _PAHO_LOGGER.setLevel(logging.DEBUG if enabled else logging.CRITICAL)


MessageCallback = Callable[[str, bytes | bytearray], None]
"""Called with the topic and payload of each message received."""


def default_ca_file() -> Path:
    """Amazon Root CA 1 and 3, shipped in the package (public certificates)."""
    return Path(str(resources.files("elf_async") / "data" / "AmazonRootCA.pem"))


def parse_endpoint(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port or None)."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:/\s\[\]]+)(?::(\d+))?", text.strip())
    if not match:
        raise UsageError(f"--mqtt-endpoint {text!r} is not HOST or HOST:PORT")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--mqtt-endpoint {text!r}: port {port} is out of range")
    return host, port


def read_ca(ca_file: Path) -> str:
    """The trusted CAs as PEM text, read once for all connections."""
    try:
        text = ca_file.read_text()
    except OSError as exc:
        raise UsageError(f"--ca-file {ca_file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"--ca-file {ca_file}: not a PEM file") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"--ca-file {ca_file}: no PEM certificate in it")
    return text


def certificate_kind(cert_pem: bytes) -> str | None:
    """``rsa`` or ``ec``: the slot OpenSSL files this certificate (and its key) under in a
    context; None for another kind or what does not parse (such a thing gets its own context)."""
    try:
        key = x509.load_pem_x509_certificate(cert_pem).public_key()
    except ValueError:
        return None
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    return None


Address = tuple[int, tuple[Any, ...]]
"""Where to connect: an address family and a socket address, as `getaddrinfo` gives them."""

# A shared identity's kept TLS session is replaced after this long even when it still resumes,
# ahead of the ticket's lifetime (mosquitto's: 2 h; AWS IoT's is not documented).
SESSION_REFRESH_S = 60.0


async def resolve(host: str, port: int) -> list[Address]:
    """The broker's TCP addresses, in the resolver's order; `ConnectFailed` when none."""
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise explain(exc) from None
    addresses: list[Address] = list(
        dict.fromkeys((int(family), tuple(address)) for family, _, _, _, address in found)
    )
    if not addresses:
        raise ConnectFailed(f"cannot resolve the MQTT endpoint {host}", permanent=True)
    return addresses


@dataclass(slots=True)
class _Slot:
    """A context and, for a shared identity, the TLS session its connects resume (a session
    only resumes on the context it came from)."""

    context: ssl.SSLContext
    session: ssl.SSLSession | None = None
    session_at: float = float("-inf")  # when it was kept (monotonic)
    # The first connect of a shared identity, while it runs: the others wait for its session.
    first: asyncio.Future[None] | None = None


class ClientTls:
    """TLS for every thing of one endpoint: verify the broker against `ca_pem` (and its host
    name), present each thing's own certificate; ALPN x-amzn-mqtt-ca when `alpn`.

    A connection gets its certificate on the event loop (`open_tls`: the load, then ``SSL_new``,
    with no await between; a full handshake may then run in a thread, on the connection's own
    copy), so contexts need no per-thread copies:
    - a shared identity (one certificate for many client ids) gets one context, its chain
      loaded once: a connect costs no PEM parsing and no context;
    - things with certificates of their own share one context per key kind. The stdlib gives a
      connection its certificate only through its context, and a context of its own per thing
      is dear (OpenSSL 3.0: ~1.4-2 ms CPU to build with the CAs, ~17 KB for as long as the
      connection lives). But ``SSL_new`` copies the context's certificate and key into the
      connection it creates, so the thing's chain is loaded right before its connection is
      made, with no await in between: the next thing's load leaves that connection alone. A
      context holds one certificate per key kind and a TLS 1.3 client presents any it holds
      that the server accepts, so a context only ever sees one kind (`certificate_kind`, parsed
      once per certificate file; anything else gets a context of its own, used once).

    The CAs are parsed once per context, so once or twice per run. `contexts_built` counts the
    contexts made.

    TLS session resumption: a shared identity keeps one session (the broker's ticket), which
    every later connect of any of its devices offers; a resumed TLS 1.3 handshake skips the
    certificates and their signatures (measured with mosquitto: ~0.6 ms of client CPU instead
    of ~2 ms). A broker that refuses it (restarted, ticket expired) gets a full handshake, and
    a new session is kept. Things with certificates of their own keep none: CPython copies a
    session when it is read from a connection (~0.35 ms CPU, measured), which every first
    connect would pay for a reconnect that may never come, and a copy per thing would cost
    memory at fleet scale.
    """

    def __init__(self, *, ca_pem: str, alpn: bool | str) -> None:
        self._ca_pem = ca_pem
        self._alpn = alpn
        self._slots: dict[object, _Slot] = {}
        self._kinds: dict[Path, str | None] = {}
        self.contexts_built = 0
        self.new_context()  # a CA OpenSSL refuses fails here, before any connection

    def new_context(self) -> ssl.SSLContext:
        """Hostname checking, CERT_REQUIRED, TLS 1.2 at least; no certificate yet."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self._ca_pem)
        if self._alpn:  # True: x-amzn-mqtt-ca; a name: that protocol (custom auth: mqtt)
            context.set_alpn_protocols([AWS_ALPN if self._alpn is True else self._alpn])
        self.contexts_built += 1
        return context

    def identity(self, *, cert_file: Path, key_file: Path, shared: bool = False) -> ThingTls:
        """A thing's TLS; `shared`: this certificate and key serve many client ids."""
        return ThingTls(self, cert_file, key_file, shared)

    def bare(self) -> ThingTls:
        """TLS without a client certificate (WebSocket with SigV4, custom authorizer): one
        context for all, a TLS session shared as a shared identity's."""
        return ThingTls(self, None, None, True)

    def slot(self, thing: ThingTls) -> _Slot:
        """The context to make `thing`'s next connection with, its certificate in place."""
        if thing.shared:
            key: object = (thing.cert_file, thing.key_file)
            slot = self._slots.get(key)
            if slot is None:
                slot = _Slot(self.new_context())
                if thing.cert_file is not None:
                    _load_chain(slot.context, thing)
                self._slots[key] = slot
            return slot
        kind = self._kind(thing)
        if kind is None:
            slot = _Slot(self.new_context())
        else:
            slot = self._slots.get(kind) or self._slots.setdefault(kind, _Slot(self.new_context()))
        try:
            _load_chain(slot.context, thing)
        except UsageError:
            self._slots.pop(kind, None)  # a failed load may have left a stray certificate
            raise
        return slot

    def _kind(self, thing: ThingTls) -> str | None:
        assert thing.cert_file is not None  # a bare thing is shared
        if thing.cert_file in self._kinds:
            return self._kinds[thing.cert_file]
        try:
            kind = certificate_kind(thing.cert_file.read_bytes())
        except OSError as exc:
            raise _unusable(thing, exc) from None
        self._kinds[thing.cert_file] = kind
        return kind


def _load_chain(context: ssl.SSLContext, thing: ThingTls) -> None:
    assert thing.cert_file is not None
    assert thing.key_file is not None
    try:
        context.load_cert_chain(certfile=thing.cert_file, keyfile=thing.key_file)
    except OSError as exc:  # ssl.SSLError included
        raise _unusable(thing, exc) from None


def _unusable(thing: ThingTls, exc: OSError) -> UsageError:
    """Why a thing's certificate or key cannot be used: a usage error, not a connect failure."""
    if isinstance(exc, FileNotFoundError):
        missing = exc.filename or next(
            (f for f in (thing.cert_file, thing.key_file) if f and not f.exists()),
            thing.cert_file,
        )
        return UsageError(f"{missing}: missing (run `elf-async create` again?)")
    return UsageError(f"{thing.cert_file}: the certificate or its key cannot be used ({exc})")


class ThingTls:
    """One thing's side of `ClientTls`: which certificate and key it presents."""

    __slots__ = ("_leads", "_offered", "_tls", "cert_file", "key_file", "shared")

    def __init__(
        self, tls: ClientTls, cert_file: Path | None, key_file: Path | None, shared: bool
    ) -> None:
        self._tls = tls
        self.cert_file = cert_file
        self.key_file = key_file
        self.shared = shared
        self._offered: ssl.SSLSession | None = None
        self._leads: _Slot | None = None  # the slot whose first connect this is

    async def turn(self) -> None:
        """A shared identity's first connect goes alone; the others wait until it is over, then
        resume its session: a burst would otherwise make each of them a full handshake."""
        if not self.shared:
            return
        slot = self._tls.slot(self)
        if slot.session is not None or (slot.first is not None and slot.first.done()):
            return
        if slot.first is None:
            slot.first = asyncio.get_running_loop().create_future()
            self._leads = slot
            return
        await asyncio.wait([slot.first])  # not cancelled with this waiter

    def over(self) -> None:
        """This connect is over, whatever its outcome: if it went first, the others go now."""
        slot, self._leads = self._leads, None
        if slot is not None and slot.first is not None and not slot.first.done():
            slot.first.set_result(None)

    @property
    def offered(self) -> ssl.SSLSession | None:
        """The session offered by the last `wrap` (None: a full handshake comes)."""
        return self._offered

    def wrap(self, sock: socket.socket, *, server_hostname: str) -> tuple[ssl.SSLSocket, _Slot]:
        """The TLS side of a connected socket (no handshake yet), offering the kept session of
        a shared identity. Raises `UsageError`."""
        slot = self._tls.slot(self)
        self._offered = slot.session
        tls_sock = slot.context.wrap_socket(
            sock,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            session=self._offered,
        )
        return tls_sock, slot

    def keep_session(self, slot: _Slot, tls_sock: ssl.SSLSocket) -> None:
        """After CONNACK (the broker's tickets come before it): keep this connection's session
        for a shared identity's next connects, unless a fresh one that works is kept already
        (reading a session costs ~0.35 ms: a burst of connects reads one, not one each)."""
        if not self.shared:
            return
        now = time.monotonic()
        if now - slot.session_at < SESSION_REFRESH_S and (
            slot.session is not self._offered or tls_sock.session_reused
        ):
            return
        session = tls_sock.session
        if session is not None and session.has_ticket:
            slot.session, slot.session_at = session, now


async def _ready(sock: socket.socket, *, write: bool) -> None:
    """Wait until the loop sees `sock` readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def open_tls(
    *, addresses: list[Address], host: str, tls: ThingTls
) -> tuple[ssl.SSLSocket, _Slot]:
    """TCP then TLS on the event loop, no executor thread: the addresses in turn until one
    takes the connection; SNI and the certificate check use `host`. Raises `UsageError` for an
    unusable certificate, ssl/OS errors otherwise."""
    loop = asyncio.get_running_loop()
    error: OSError = ConnectionRefusedError("no address to connect to")
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            for option in SOCKET_OPTIONS:
                sock.setsockopt(*option)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            tls_sock, slot = tls.wrap(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        try:
            if tls.offered is None:
                await _full_handshake(tls_sock)
            else:
                await _handshake(tls_sock)
            return tls_sock, slot
        except BaseException:
            with contextlib.suppress(OSError):
                tls_sock.shutdown(socket.SHUT_RDWR)  # wakes a handshake blocked in a thread
            tls_sock.close()
            raise
    raise error


async def _handshake(tls_sock: ssl.SSLSocket) -> None:
    """The handshake on the loop, a step each time the socket is ready."""
    while True:
        try:
            tls_sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _ready(tls_sock, write=False)
        except ssl.SSLWantWriteError:
            await _ready(tls_sock, write=True)


async def _full_handshake(tls_sock: ssl.SSLSocket) -> None:
    """A full handshake (~2-3 ms of OpenSSL CPU, without the GIL) in a thread: many run on
    other cores at once, the loop's own share stays small. A resumed one (~0.6 ms) stays on
    the loop (`_handshake`): a thread hop would cost more than it spreads."""
    tls_sock.setblocking(True)
    await asyncio.get_running_loop().run_in_executor(None, tls_sock.do_handshake)
    tls_sock.setblocking(False)


# A connection without a certificate that AWS IoT closes before CONNACK: its credentials
# (an IAM policy for SigV4, the authorizer's answer and policy for a custom one) do not allow it.
_REFUSED_WITHOUT_CERTIFICATE = (
    "the credentials or the custom authorizer were refused, or their policy does not allow "
    "iot:Connect for this client ID"
)


class ConnectFailed(Exception):
    """A connection attempt failed; `reason` is for humans, `permanent` says retrying is futile."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


# TLS alerts and verification errors: what they mean for a load test against AWS IoT.
_TLS_REASONS = (
    ("UNKNOWN_CA", "the broker does not trust the CA that signed this thing's certificate"),
    ("CERTIFICATE_REQUIRED", "the broker requires a client certificate"),
    ("CERTIFICATE_REVOKED", "the broker says this thing's certificate is revoked"),
    ("CERTIFICATE_EXPIRED", "the broker says this thing's certificate has expired"),
    ("BAD_CERTIFICATE", "the broker refused this thing's certificate"),
    ("CERTIFICATE_UNKNOWN", "the broker refused this thing's certificate"),
    ("ACCESS_DENIED", "the broker denied access to this certificate"),
    ("CERTIFICATE_VERIFY_FAILED", "the broker's certificate is not trusted by --ca-file"),
    ("NO_APPLICATION_PROTOCOL", "the broker does not speak ALPN x-amzn-mqtt-ca on this port"),
)


def explain(error: BaseException | str) -> ConnectFailed:
    """Turn what paho, ssl or the socket said into a reason a user can act on."""
    text = str(error)
    for marker, meaning in _TLS_REASONS:
        if marker in text.upper():
            return ConnectFailed(f"{meaning} ({marker})", permanent=True)
    if isinstance(error, ssl.CertificateError) or ("match" in text and "hostname" in text):
        return ConnectFailed(
            f"the broker's certificate does not name this host ({text})", permanent=True
        )
    if isinstance(error, socket.gaierror):
        return ConnectFailed(f"cannot resolve the MQTT endpoint ({error.strerror})", permanent=True)
    if isinstance(error, ConnectionRefusedError) or "Connection refused" in text:
        return ConnectFailed("connection refused (is the broker running?)")
    code = error.errno if isinstance(error, OSError) else None
    if code is None and "Too many open files" in text:  # aiomqtt passes paho's OSError as text
        code = errno.EMFILE
    if (lack := refused(code)) is not None:
        return ConnectFailed(lack, permanent=True)
    if isinstance(error, MqttConnectError):
        return ConnectFailed(
            f"the broker refused the MQTT connection: {connack_refusal(text)}", permanent=True
        )
    return ConnectFailed(text or type(error).__name__)


@dataclass(eq=False)
class Link:
    """One live connection: the aiomqtt client, its paho client for the hot path, its fate."""

    client: aiomqtt.Client
    lost: asyncio.Future[str]  # resolves with a reason when the broker drops the connection
    opened_at: float = field(default_factory=time.monotonic)  # its CONNACK
    reopened: bool = False  # it replaces a connection the broker dropped
    resumed: bool = False  # its TLS session was resumed (no full handshake)
    topic_alias_maximum: int = 0  # MQTT 5: the topic aliases its CONNACK allows (0: none)

    @property
    def paho(self) -> paho.Client:
        return paho_client(self.client)

    async def subscribe(self, topic: str, qos: int, *, within: float) -> None:
        codes = await self.client.subscribe(topic, qos=qos, timeout=within)
        if any(int(code.value if hasattr(code, "value") else code) >= 0x80 for code in codes):
            raise ConnectFailed(f"the broker refused the subscription to {topic}", permanent=True)

    async def close(self, *, within: float = 5.0) -> None:
        """Disconnect cleanly if still connected; forget it if the broker already dropped it."""
        if not self.lost.done():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                await asyncio.wait_for(self.client.__aexit__(None, None, None), within)
        collect_disconnection(self.client)


async def connect(
    *,
    host: str,
    port: int,
    client_id: str,
    tls: ThingTls,
    within: float,
    keepalive: int = KEEPALIVE,
    max_inflight: int = 100,
    on_message: MessageCallback | None = None,
    addresses: list[Address] | None = None,
    protocol: int = paho.MQTTv311,
    websocket_path: Callable[[], str] | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Link:
    """Open one mutual-TLS MQTT 3.1.1 connection (clean session; `protocol` paho.MQTTv5: an
    MQTT 5 one, clean start) or raise `ConnectFailed`.

    TCP and TLS are done on the event loop (`open_tls`) and paho sends CONNECT on the socket
    made (`takeover.enter`): no executor thread, no blocking handshake. `addresses`: the
    broker's, resolved once by the caller (`resolve`); `host` names it for SNI and the check of
    its certificate. A certificate or key that cannot be used raises `UsageError`.
    `websocket_path`: MQTT over WebSocket, upgraded with the path it gives (signed afresh for
    each connection); `username`/`password`: CONNECT's (a custom authorizer's).
    """
    try:
        return await _connect(
            host=host,
            port=port,
            client_id=client_id,
            tls=tls,
            within=within,
            keepalive=keepalive,
            max_inflight=max_inflight,
            on_message=on_message,
            addresses=addresses,
            protocol=protocol,
            websocket_path=websocket_path,
            username=username,
            password=password,
        )
    finally:
        tls.over()


async def _connect(
    *,
    host: str,
    port: int,
    client_id: str,
    tls: ThingTls,
    within: float,
    keepalive: int,
    max_inflight: int,
    on_message: MessageCallback | None,
    addresses: list[Address] | None,
    protocol: int = paho.MQTTv311,
    websocket_path: Callable[[], str] | None,
    username: str | None,
    password: str | None,
) -> Link:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            await tls.turn()
            if addresses is None:
                addresses = await resolve(host, port)
            tls_sock, slot = await open_tls(addresses=addresses, host=host, tls=tls)
    except TimeoutError:
        raise ConnectFailed("timed out before the TLS handshake completed") from None
    except (OSError, ValueError) as exc:  # ssl.SSLError and ssl.CertificateError included
        raise explain(exc) from None
    sock: ssl.SSLSocket | WebSocket = tls_sock
    if websocket_path is not None:
        sock = await _upgraded(tls_sock, host=host, path=websocket_path, within=within)
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        tls_context=slot.context,  # paho only records it: the socket is already TLS
        timeout=within,
        keepalive=keepalive,
        clean_session=True if protocol == paho.MQTTv311 else None,  # MQTT 5: clean start
        protocol=aiomqtt.ProtocolVersion(protocol),
        max_inflight_messages=max_inflight,
        logger=_PAHO_LOGGER,
        username=username,
        password=password,
    )
    inner = paho_client(client)
    errors: list[str] = []
    failed: asyncio.Future[str] = loop.create_future()
    lost: asyncio.Future[str] = loop.create_future()
    aiomqtt_on_disconnect = inner.on_disconnect
    assert aiomqtt_on_disconnect is not None
    aiomqtt_on_connect = inner.on_connect
    assert aiomqtt_on_connect is not None
    connack: list[Any] = []  # the CONNACK's properties (MQTT 5)

    def on_connect(*args: Any) -> None:
        connack[:] = args[4:]
        aiomqtt_on_connect(*args)

    def on_log(_client: Any, _userdata: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            errors.append(text)

    def on_disconnect(*args: Any) -> None:  # paho calls it on the loop: it has no thread here
        aiomqtt_on_disconnect(*args)
        target = lost if connected else failed
        if not target.done():
            target.set_result(errors[-1] if errors else f"connection lost ({args[3]})")

    def give_up() -> None:
        abandon(inner)
        tls_sock.close()  # paho may not have taken it yet
        collect_disconnection(client)

    connected = False
    inner.on_log = on_log
    inner.on_disconnect = on_disconnect
    inner.on_connect = on_connect
    entering = asyncio.ensure_future(enter(client, sock))
    try:
        waiting: list[asyncio.Future[Any]] = [entering, failed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        entering.cancel()
        give_up()
        raise
    if not entering.done():
        # The broker closed the connection before CONNACK (a TLS alert after the handshake).
        entering.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await entering
        give_up()
        reason = failed.result()
        if "SSL" not in reason and "alert" not in reason.lower():
            reason = "the broker closed the connection before CONNACK " + (
                "(on AWS IoT: certificate inactive, or the policy does not allow iot:Connect "
                f"for this client ID) [{reason}]"
                if websocket_path is None and username is None
                else f"(on AWS IoT: {_REFUSED_WITHOUT_CERTIFICATE}) [{reason}]"
            )
        raise explain(reason)
    error = entering.exception()
    if error is not None:
        give_up()
        detail = errors[-1] if errors and "timed out" in str(error) else error
        raise explain(detail)
    connected = True
    if failed.done():  # closed between its CONNACK and now (a takeover, say): lost already
        lost.set_result(failed.result())
    tls.keep_session(slot, tls_sock)
    inner.on_log = None  # paho formats every log line when on_log is set: not on the hot path
    if on_message is not None:
        inner.on_message = lambda _c, _u, message: on_message(message.topic, message.payload)
    aliases = topic_alias_maximum(connack[0] if connack else None)
    connack.clear()  # paho's Properties (~1 KB, made even for 3.1.1): not held for the run
    return Link(client, lost, resumed=bool(tls_sock.session_reused), topic_alias_maximum=aliases)


async def _upgraded(
    tls_sock: ssl.SSLSocket, *, host: str, path: Callable[[], str], within: float
) -> WebSocket:
    """The WebSocket upgrade of a TLS connection just made, or `ConnectFailed` (the socket
    closed): a refusal with a status (403: a bad or expired signature) is permanent."""
    try:
        async with asyncio.timeout(within):
            return await upgrade(tls_sock, host=host, path=path())
    except BaseException as exc:
        tls_sock.close()
        if isinstance(exc, TimeoutError):
            raise ConnectFailed("timed out during the WebSocket upgrade") from None
        if isinstance(exc, WebSocketRefused):
            raise ConnectFailed(str(exc), permanent=exc.permanent) from None
        if isinstance(exc, OSError):
            raise explain(exc) from None
        raise
