"""MQTT over mutual TLS: the TLS context AWS IoT needs, and connections that say why they fail.

Each connection is an aiomqtt 2.x client (paho underneath, driven by the event loop). Two
things aiomqtt does not give are added here, in one place, through its paho client:
- the real reason of a refused connection: a TLS alert from the broker (unknown CA, no
  certificate) reaches aiomqtt only as "Operation timed out", while paho logs it;
- a hot path without a per-message await: `send` frames PUBLISH packets and reads PUBACKs
  itself on the connection's socket (elf_async.fastpath; aiomqtt's ``publish()`` costs
  ~150-200 µs, paho's own ``publish()`` and reader cap QoS 1 far lower than that path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError

from elf_async.errors import UsageError

DEFAULT_PORT = 8883
ALPN_PORT = 443
AWS_ALPN = "x-amzn-mqtt-ca"  # MQTT with X.509 on port 443
KEEPALIVE = 60  # AWS clamps keep-alive to 30-1200 s
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


def tls_context(*, ca_pem: str, cert_file: Path, key_file: Path, alpn: bool) -> ssl.SSLContext:
    """Verify the broker against `ca_pem`, prove the thing's identity with its own certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc.filename}: missing (run `elf-async create` again?)") from exc
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"{cert_file}: the certificate or its key cannot be used ({exc})") from exc
    if alpn:
        context.set_alpn_protocols([AWS_ALPN])
    return context


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
    if isinstance(error, MqttConnectError):
        return ConnectFailed(f"the broker refused the MQTT connection: {text}", permanent=True)
    return ConnectFailed(text or type(error).__name__)


@dataclass(eq=False)
class Link:
    """One live connection: the aiomqtt client, its paho client for the hot path, its fate."""

    client: aiomqtt.Client
    lost: asyncio.Future[str]  # resolves with a reason when the broker drops the connection

    @property
    def paho(self) -> paho.Client:
        return self.client._client

    async def subscribe(self, topic: str, qos: int, *, within: float) -> None:
        codes = await self.client.subscribe(topic, qos=qos, timeout=within)
        if any(int(code.value if hasattr(code, "value") else code) >= 0x80 for code in codes):
            raise ConnectFailed(f"the broker refused the subscription to {topic}", permanent=True)

    async def close(self, *, within: float = 5.0) -> None:
        """Disconnect cleanly if still connected; forget it if the broker already dropped it."""
        if not self.lost.done():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError, OSError):
                await asyncio.wait_for(self.client.__aexit__(None, None, None), within)
        _collect(self.client)


def _collect(client: aiomqtt.Client) -> None:
    """Retrieve aiomqtt's disconnection error so that asyncio does not log it as unhandled."""
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


async def connect(
    *,
    host: str,
    port: int,
    client_id: str,
    context: ssl.SSLContext,
    within: float,
    max_inflight: int = 100,
    on_message: MessageCallback | None = None,
) -> Link:
    """Open one mutual-TLS MQTT 3.1.1 connection (clean session) or raise `ConnectFailed`."""
    loop = asyncio.get_running_loop()
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        tls_context=context,
        timeout=within,
        keepalive=KEEPALIVE,
        clean_session=True,
        max_inflight_messages=max_inflight,
        logger=_PAHO_LOGGER,
    )
    inner: paho.Client = client._client
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
        _abandon(inner)
        raise
    if not enter.done():
        # The broker closed the connection before CONNACK (a TLS alert after the handshake).
        enter.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await enter
        _abandon(inner)
        _collect(client)
        reason = failed.result()
        if "SSL" not in reason and "alert" not in reason.lower():
            reason = "the broker closed the connection before CONNACK " + (
                "(on AWS IoT: certificate inactive, or the policy does not allow iot:Connect "
                f"for this client ID) [{reason}]"
            )
        raise explain(reason)
    error = enter.exception()
    if error is not None:
        _abandon(inner)
        _collect(client)
        detail = errors[-1] if errors and "timed out" in str(error) else error
        raise explain(detail)
    connected = True
    inner.on_log = None  # paho formats every log line when on_log is set: not on the hot path
    if on_message is not None:
        inner.on_message = lambda _c, _u, message: on_message(message.topic, message.payload)
    return Link(client, lost)


def _abandon(inner: paho.Client) -> None:
    """Close the socket of a connection that never completed, and cut paho off from the event
    loop first: paho's connect may still finish in its executor thread, and its socket
    callbacks must not reach a loop that is closed by then (they would print a traceback)."""
    inner.on_socket_open = None
    inner.on_socket_close = None
    inner.on_socket_register_write = None
    inner.on_socket_unregister_write = None
    with contextlib.suppress(Exception):
        inner._sock_close()
