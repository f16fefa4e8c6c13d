"""MQTT over mutual TLS: the TLS context AWS IoT needs, and connections that say why they fail.

Each connection is an aiomqtt 2.x client (paho underneath, driven by the event loop). Two
things aiomqtt does not give are added here, in one place, through its paho client:
- the real reason of a refused connection: a TLS alert from the broker (unknown CA, no
  certificate) reaches aiomqtt only as "Operation timed out", while paho logs it;
- a hot path without a per-message await: `send` frames PUBLISH packets and reads PUBACKs
  itself on the connection's socket (elf_async.dataplane.takeover; aiomqtt's ``publish()`` costs
  ~150-200 µs, paho's own ``publish()`` and reader cap QoS 1 far lower than that path).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from elf_async.dataplane.takeover import abandon, collect_disconnection, paho_client
from elf_async.errors import UsageError
from elf_async.fdlimit import refused

DEFAULT_PORT = 8883
ALPN_PORT = 443
AWS_ALPN = "x-amzn-mqtt-ca"  # MQTT with X.509 on port 443
KEEPALIVE = 60  # seconds; AWS clamps keep-alive to 30-1200 s
# Nagle off: a due message is written at once, not held until the previous segment's ACK
# (paho leaves Nagle on). Set once per connection, right after it is made (aiomqtt applies it).
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


class ClientTls:
    """TLS for every thing of one endpoint: verify the broker against `ca_pem` (and its host
    name), present each thing's own certificate; ALPN x-amzn-mqtt-ca when `alpn`.

    The stdlib gives a connection its certificate only through its `ssl.SSLContext`, and a
    context of its own per thing is dear: with OpenSSL 3.0, ~0.6 ms CPU to build with the CAs
    and ~17 KB kept for as long as the connection lives (measured with benchmarks/connect.py).
    But OpenSSL's ``SSL_new`` copies the context's certificates and keys into the connection
    it creates, so one context serves many things in turn: load a thing's chain, create its
    connection; loading the next thing's chain leaves that connection alone. Two rules keep
    each thing on its own identity:

    - a context holds one certificate per key kind, and a TLS 1.3 client presents any it
      holds that the server accepts: a context only ever sees certificates and keys of one
      kind (`certificate_kind`; anything else gets a context of its own, used once, and a
      context a load failed on is dropped);
    - the load and the creation must not interleave with another thing's: contexts are per
      thread, as paho loads (`ThingTls.wrap_socket`), connects and shakes hands in one
      executor thread.
    """

    def __init__(self, *, ca_pem: str, alpn: bool) -> None:
        self._ca_pem = ca_pem
        self._alpn = alpn
        self._local = threading.local()
        self.new_context()  # a CA that OpenSSL refuses fails here, before any connection

    def new_context(self) -> ssl.SSLContext:
        """Hostname checking, CERT_REQUIRED, TLS 1.2 at least; no certificate yet."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self._ca_pem)
        if self._alpn:
            context.set_alpn_protocols([AWS_ALPN])
        return context

    def context(self, kind: str | None) -> ssl.SSLContext:
        """This thread's context for keys of `kind`; a new one each time for None."""
        if kind is None:
            return self.new_context()
        contexts: dict[str, ssl.SSLContext] | None = getattr(self._local, "contexts", None)
        if contexts is None:
            contexts = self._local.contexts = {}
        context = contexts.get(kind)
        if context is None:
            context = contexts[kind] = self.new_context()
        return context

    def forget(self, kind: str | None) -> None:
        """Drop this thread's context for `kind` (a failed load may have left a stray slot)."""
        contexts: dict[str, ssl.SSLContext] | None = getattr(self._local, "contexts", None)
        if contexts is not None and kind is not None:
            contexts.pop(kind, None)

    def identity(self, *, cert_file: Path, key_file: Path) -> ThingTls:
        return ThingTls(self, cert_file, key_file)


class ThingTls:
    """One thing's side of `ClientTls`, handed to aiomqtt/paho in place of an `ssl.SSLContext`:
    paho only reads ``check_hostname`` and calls ``wrap_socket`` (in its connect, in the
    executor thread), and each call loads the thing's chain right before the SSL object is
    made. `failure` says why the certificate or key could not be used (a usage error, not a
    connection failure)."""

    __slots__ = ("_tls", "cert_file", "failure", "key_file")
    check_hostname = True  # the context checks it; tells paho not to match it again

    def __init__(self, tls: ClientTls, cert_file: Path, key_file: Path) -> None:
        self._tls = tls
        self.cert_file = cert_file
        self.key_file = key_file
        self.failure: UsageError | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_hostname: str | None = None,
        do_handshake_on_connect: bool = True,
    ) -> ssl.SSLSocket:
        kind = None
        try:
            kind = certificate_kind(self.cert_file.read_bytes())
            context = self._tls.context(kind)
            context.load_cert_chain(certfile=self.cert_file, keyfile=self.key_file)
        except OSError as exc:  # ssl.SSLError included
            self._tls.forget(kind)
            if isinstance(exc, FileNotFoundError):
                missing = exc.filename or next(
                    (f for f in (self.cert_file, self.key_file) if not f.exists()), self.cert_file
                )
                self.failure = UsageError(f"{missing}: missing (run `elf-async create` again?)")
            else:
                self.failure = UsageError(
                    f"{self.cert_file}: the certificate or its key cannot be used ({exc})"
                )
            sock.close()
            raise
        return context.wrap_socket(
            sock, server_hostname=server_hostname, do_handshake_on_connect=do_handshake_on_connect
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
        return ConnectFailed(f"the broker refused the MQTT connection: {text}", permanent=True)
    return ConnectFailed(text or type(error).__name__)


@dataclass(eq=False)
class Link:
    """One live connection: the aiomqtt client, its paho client for the hot path, its fate."""

    client: aiomqtt.Client
    lost: asyncio.Future[str]  # resolves with a reason when the broker drops the connection
    opened_at: float = field(default_factory=time.monotonic)  # its CONNACK
    reopened: bool = False  # it replaces a connection the broker dropped

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
) -> Link:
    """Open one mutual-TLS MQTT 3.1.1 connection (clean session) or raise `ConnectFailed`."""
    loop = asyncio.get_running_loop()
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        tls_context=cast("ssl.SSLContext", tls),  # duck-typed: see ThingTls
        timeout=within,
        keepalive=keepalive,
        clean_session=True,
        max_inflight_messages=max_inflight,
        logger=_PAHO_LOGGER,
        socket_options=SOCKET_OPTIONS,
    )
    inner = paho_client(client)
    inner.connect_timeout = within
    errors: list[str] = []
    failed: asyncio.Future[str] = loop.create_future()
    lost: asyncio.Future[str] = loop.create_future()
    aiomqtt_on_disconnect = inner.on_disconnect
    assert aiomqtt_on_disconnect is not None

    def on_log(_client: Any, _userdata: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            errors.append(text)  # a list append is safe from paho's executor thread

    def settle(future: asyncio.Future[str], reason: str) -> None:
        if not future.done():
            future.set_result(reason)

    def on_disconnect(*args: Any) -> None:
        aiomqtt_on_disconnect(*args)
        reason = errors[-1] if errors else f"connection lost ({args[3]})"
        target = lost if connected else failed
        if threading.get_ident() == loop_thread:
            settle(target, reason)
        else:
            loop.call_soon_threadsafe(settle, target, reason)

    connected = False
    loop_thread = threading.get_ident()
    inner.on_log = on_log
    inner.on_disconnect = on_disconnect
    enter = asyncio.ensure_future(client.__aenter__())
    try:
        waiting: list[asyncio.Future[Any]] = [enter, failed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        enter.cancel()
        abandon(inner)
        raise
    if not enter.done():
        # The broker closed the connection before CONNACK (a TLS alert after the handshake).
        enter.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await enter
        abandon(inner)
        collect_disconnection(client)
        if tls.failure is not None:
            raise tls.failure
        reason = failed.result()
        if "SSL" not in reason and "alert" not in reason.lower():
            reason = "the broker closed the connection before CONNACK " + (
                "(on AWS IoT: certificate inactive, or the policy does not allow iot:Connect "
                f"for this client ID) [{reason}]"
            )
        raise explain(reason)
    error = enter.exception()
    if error is not None:
        abandon(inner)
        collect_disconnection(client)
        if tls.failure is not None:
            raise tls.failure
        detail = errors[-1] if errors and "timed out" in str(error) else error
        raise explain(detail)
    connected = True
    inner.on_log = None  # paho formats every log line when on_log is set: not on the hot path
    if on_message is not None:
        inner.on_message = lambda _c, _u, message: on_message(message.topic, message.payload)
    return Link(client, lost)
