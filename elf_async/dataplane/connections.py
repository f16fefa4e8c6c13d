"""Connecting a fleet: paced like AWS's connect quota, retried with backoff, counted.

AWS allows 500 CONNECTs per second per account and one per second per client ID; a
client ID connected faster than that is throttled. Every attempt, success, failure and
reconnect is counted, and the connect time goes into a histogram.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elf_async.dataplane.auth import CUSTOM_ALPN, Auth, CustomAuth, SigV4, Transport, label
from elf_async.dataplane.mqtt import (
    ALPN_PORT,
    KEEPALIVE,
    Address,
    ClientTls,
    ConnectFailed,
    Link,
    MessageCallback,
    resolve,
)
from elf_async.dataplane.mqtt import connect as mqtt_connect
from elf_async.metrics import Histogram
from elf_async.pacing import RateLimiter, backoff_delay

CLIENT_ID_INTERVAL = 1.0  # AWS: one CONNECT per second per client ID
RECONNECT_CAP = 10.0  # longest wait between reconnect attempts
# Connects under way at once, per event loop. The rate limiter alone admits `--connect-rate`
# a second whatever the client can finish: above what its CPU handshakes (~200/s a core),
# connects queue up inside the loop until CONNACKs are handled past the keep-alive and the
# broker or paho drops them (measured: 1,671 of 19,900 at 500/s). 256 keeps each connect's
# wait near 256 x ~5 ms of CPU here, and covers 500/s at ~0.5 s of network round trips.
CONNECTS_IN_FLIGHT = 256
# A reconnection the broker closes this soon after its CONNACK was taken over: another client
# connected with the same client ID (the broker keeps one connection per client ID, and two
# clients that both reconnect take it from each other, each new connection living about one
# reconnect delay). MQTT 3.1.1 gives no reason; the timing is the sign. A first connection
# lost early is not counted: a broker restarted right after the start drops those too.
TAKEOVER_WINDOW_S = 5.0
TAKEOVER = "taken over: another client connected with the same client ID"
# The endpoint is resolved once, then again when this old: an AWS endpoint is a DNS name over
# load balancers, so a long run follows its answers; connects take its addresses in turn.
RESOLVE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the broker is and which CAs vouch for it."""

    host: str
    port: int
    ca_pem: str
    transport: Transport = "mqtts"
    auth: Auth = None  # None: each thing's X.509 certificate

    @property
    def alpn(self) -> bool:
        """Port 443 needs ALPN x-amzn-mqtt-ca to reach MQTT with X.509 on AWS IoT."""
        return self.port == ALPN_PORT and self.auth is None

    @property
    def alpn_protocol(self) -> bool | str:
        """What the TLS handshake offers: x-amzn-mqtt-ca (True) on 443 with X.509, ``mqtt``
        for a custom authorizer, nothing else (a WebSocket is an HTTP upgrade)."""
        return CUSTOM_ALPN if isinstance(self.auth, CustomAuth) else self.alpn

    @property
    def label(self) -> str:
        """Transport and authentication, as the report says them: ``wss+sigv4``, ..."""
        return label(self.transport, self.auth)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Identity:
    """A thing as MQTT sees it: its own certificate and key, and the client ID it connects
    with: its name, or `alias` (a watcher's, which a send as the thing cannot collide with)."""

    name: str
    index: int
    key_file: Path
    cert_file: Path
    alias: str | None = None
    shared: bool = False  # the certificate and key serve many client ids (`--identity shared`)

    @property
    def client_id(self) -> str:
        return self.alias or self.name


@dataclass
class Connector:
    """Opens connections for many things on one event loop, at `rate` per second."""

    endpoint: Endpoint
    rate: float
    timeout: float
    retries: int  # extra attempts in the initial connect phase
    max_inflight: int = 100
    keepalive: int = KEEPALIVE  # seconds
    protocol: int = 4  # paho's MQTTv311; 5: MQTT 5 (elf_async.dataplane.mqtt5.PROTOCOL_LEVEL)
    in_flight: int = CONNECTS_IN_FLIGHT  # connects under way at once
    attempted: int = 0  # CONNECT attempts, reconnections included
    succeeded: int = 0
    failed: int = 0  # attempts that failed; attempted == succeeded + failed once settled
    things_failed: int = 0  # things that never connected
    reconnects: int = 0  # connections the broker dropped that were reopened
    reconnect_attempts: int = 0  # attempts to reopen them, failed ones included
    takeovers: int = 0  # connections closed within TAKEOVER_WINDOW_S of their CONNACK
    connect_time: Histogram = field(default_factory=Histogram)
    resumed: int = 0  # connections whose TLS session was resumed (no full handshake)
    resolutions: int = 0  # DNS look-ups of the endpoint
    errors: Counter[str] = field(default_factory=Counter)
    tls: ClientTls = field(init=False)
    _limiter: RateLimiter = field(init=False)
    _in_flight: asyncio.Semaphore = field(init=False)
    _last_attempt: dict[str, float] = field(default_factory=dict)
    _addresses: list[Address] = field(default_factory=list)
    _resolved_at: float = float("-inf")
    _resolving: asyncio.Future[None] | None = None
    _turn: int = 0

    def __post_init__(self) -> None:
        self._limiter = RateLimiter(self.rate, name="CONNECT")
        self._in_flight = asyncio.Semaphore(self.in_flight)
        # Contexts shared by all things, TLS sessions kept for reconnects (see ClientTls).
        self.tls = ClientTls(ca_pem=self.endpoint.ca_pem, alpn=self.endpoint.alpn_protocol)

    async def addresses(self) -> list[Address]:
        """The endpoint's addresses, resolved at most once per RESOLVE_EVERY_S (concurrent
        connects share one look-up), starting at the next one in turn: connects spread over
        every address the name has, as the load balancers behind it expect."""
        if time.monotonic() - self._resolved_at >= RESOLVE_EVERY_S:
            if self._resolving is None:
                self._resolving = asyncio.ensure_future(self._resolve())
            resolving = self._resolving
            try:
                await asyncio.shield(resolving)
            finally:
                if self._resolving is resolving and resolving.done():
                    self._resolving = None
        self._turn = (self._turn + 1) % len(self._addresses)
        return self._addresses[self._turn :] + self._addresses[: self._turn]

    async def _resolve(self) -> None:
        self.resolutions += 1
        self._addresses = await resolve(self.endpoint.host, self.endpoint.port)
        self._resolved_at = time.monotonic()

    async def _attempt(
        self,
        thing: Identity,
        on_message: MessageCallback | None,
    ) -> Link:
        last = self._last_attempt.get(thing.client_id)
        if last is not None:
            wait = last + CLIENT_ID_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        async with self._in_flight:
            await self._limiter.acquire()
            self._last_attempt[thing.client_id] = started = time.monotonic()
            self.attempted += 1
            auth = self.endpoint.auth
            try:
                link = await mqtt_connect(
                    host=self.endpoint.host,
                    port=self.endpoint.port,
                    addresses=await self.addresses(),
                    client_id=thing.client_id,
                    tls=self.tls.bare()
                    if auth is not None
                    else self.tls.identity(
                        cert_file=thing.cert_file, key_file=thing.key_file, shared=thing.shared
                    ),
                    within=self.timeout,
                    keepalive=self.keepalive,
                    max_inflight=self.max_inflight,
                    on_message=on_message,
                    protocol=self.protocol,
                    **_credentials(auth, host=self.endpoint.host, client_id=thing.client_id),
                )
            except ConnectFailed as exc:
                self.failed += 1
                self.errors[exc.reason] += 1
                raise
            self.succeeded += 1
            self.resumed += link.resumed
            self.connect_time.record(time.monotonic() - started)
            return link

    def lost(self, link: Link, reason: str) -> str:
        """Count a connection the broker closed, by reason; a reconnection closed right after
        its CONNACK counts as a takeover. Returns the reason, for the thing's error."""
        if link.reopened and time.monotonic() - link.opened_at < TAKEOVER_WINDOW_S:
            self.takeovers += 1
            reason = TAKEOVER
        self.errors[f"connection lost: {reason}"] += 1
        return reason

    async def open(
        self,
        thing: Identity,
        *,
        on_message: MessageCallback | None = None,
    ) -> Link:
        """First connection of a thing: a few retries, none for a permanent refusal.

        Raises `ConnectFailed` with the last reason when the thing cannot connect.
        """
        attempt = 0
        while True:
            try:
                link = await self._attempt(thing, on_message)
            except ConnectFailed as exc:
                if exc.permanent or attempt >= self.retries:
                    self.things_failed += 1
                    raise
                await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=RECONNECT_CAP))
                attempt += 1
                continue
            return link

    async def reopen(
        self,
        thing: Identity,
        *,
        on_message: MessageCallback | None = None,
    ) -> Link:
        """Reconnect after the broker dropped a thing: retry with backoff until cancelled."""
        attempt = 0
        while True:
            self.reconnect_attempts += 1
            try:
                link = await self._attempt(thing, on_message)
            except ConnectFailed:
                await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=RECONNECT_CAP))
                attempt += 1
                continue
            self.reconnects += 1
            link.reopened = True
            return link


def _credentials(auth: Auth, *, host: str, client_id: str) -> dict[str, Any]:
    """What a connection passes besides its TLS: a WebSocket path signed now (SigV4), a
    custom authorizer's username and password."""
    if isinstance(auth, SigV4):
        return {"websocket_path": lambda: auth.path(host)}
    if isinstance(auth, CustomAuth):
        return {"username": auth.username_for(client_id), "password": auth.password}
    return {}
