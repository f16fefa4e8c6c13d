"""MQTT fixtures: a real mosquitto with mutual TLS, a test CA, and an independent subscriber.

The subscriber ("observer") is plain paho-mqtt, not elf-async code: it is the independent
witness of what actually reached the broker.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from elf_async.controlplane.certs import CertificateAuthority, generate_key, key_pem
from elf_async.files import write_private, write_public
from elf_async.local.mosquitto import Mosquitto
from support.wait import wait_until


@dataclass(frozen=True)
class FixtureCA:
    """A CA on disk: mosquitto trusts it, `create --cert-mode ca` signs things with it."""

    ca: CertificateAuthority
    cert_file: Path
    key_file: Path

    def client_cert(self, directory: Path, common_name: str) -> tuple[Path, Path]:
        """A client key and certificate signed by this CA: (key, cert)."""
        key = generate_key("ec")
        key_file, cert_file = directory / f"{common_name}.key", directory / f"{common_name}.crt"
        write_private(key_file, key_pem(key))
        write_public(cert_file, self.ca.sign(key.public_key(), common_name))
        return key_file, cert_file


def _make_ca(directory: Path, name: str) -> FixtureCA:
    ca = CertificateAuthority.create(name)
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    write_public(cert_file, ca.cert_pem)
    write_private(key_file, key_pem(ca.key))
    return FixtureCA(ca, cert_file, key_file)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> FixtureCA:
    return _make_ca(tmp_path_factory.mktemp("ca"), "elf-test-ca")


@pytest.fixture(scope="session")
def rogue_ca(tmp_path_factory: pytest.TempPathFactory) -> FixtureCA:
    """A CA the broker does not trust."""
    return _make_ca(tmp_path_factory.mktemp("rogue"), "rogue-ca")


def start_mosquitto(directory: Path, ca: FixtureCA, port: int | None = None) -> Mosquitto:
    """The test broker: mutual TLS, persistent sessions, and every packet in its log
    (`Received PINGREQ from NAME`, `Sending SUBACK to NAME`, ...) for tests to wait for."""
    return Mosquitto.start(
        directory=directory, ca=ca.ca, port=port, persistence=True, log_types=("debug",)
    )


@pytest.fixture
def mosquitto(test_ca: FixtureCA, tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto on a free 127.0.0.1 port, `require_certificate true`, stopped by PID."""
    broker = start_mosquitto(tmp_path / "mosquitto", test_ca)
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Observer:
    """An independent paho-mqtt subscriber that records every message per topic."""

    broker: Mosquitto
    key_file: Path
    cert_file: Path
    topic: str = "#"
    qos: int = 1
    client_id: str = "observer"
    # paho.MQTTv5: also records each message's user properties and message expiry
    protocol: int = paho.MQTTv311
    messages: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    user_properties: list[list[tuple[str, str]]] = field(default_factory=list)
    expiries: list[int | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _subscribed: threading.Event = field(default_factory=threading.Event)
    _client: Any = None

    def start(self) -> Observer:
        v5 = self.protocol == paho.MQTTv5
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=self.protocol,
        )
        client.tls_set(
            ca_certs=str(self.broker.ca_file),
            certfile=str(self.cert_file),
            keyfile=str(self.key_file),
        )
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", self.broker.port, keepalive=30)
        client.loop_start()
        self._client = client
        assert self._subscribed.wait(10), "the observer could not subscribe"
        return self

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(self.topic, qos=self.qos)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages[message.topic].append(message.payload)
            if self.protocol == paho.MQTTv5:
                given = getattr(message.properties, "UserProperty", [])
                self.user_properties.append([tuple(pair) for pair in given])
                self.expiries.append(getattr(message.properties, "MessageExpiryInterval", None))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {topic: len(payloads) for topic, payloads in self.messages.items()}

    def payload_sizes(self) -> set[int]:
        """The distinct sizes of every payload received."""
        with self._lock:
            return {len(payload) for payloads in self.messages.values() for payload in payloads}

    def documents(self, topic: str) -> list[dict[str, Any]]:
        """Every payload on `topic` parsed as JSON (fails if one does not parse)."""
        with self._lock:
            return [json.loads(payload) for payload in self.messages[topic]]

    def settle(self, expected_total: int, timeout: float = 10.0) -> None:
        """Wait until `expected_total` messages arrived."""
        wait_until(
            lambda: sum(self.counts().values()) >= expected_total,
            what=f"{expected_total} messages at the observer (it has {self.counts()})",
            timeout=timeout,
        )

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()


@pytest.fixture
def observer(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> Iterator[Callable[..., Observer]]:
    """Start independent subscribers: ``observer(topic="elf/#", qos=1)``."""
    started: list[Observer] = []

    def start(
        topic: str = "#", qos: int = 1, client_id: str = "observer", protocol: int = paho.MQTTv311
    ) -> Observer:
        key_file, cert_file = test_ca.client_cert(tmp_path / "observer", client_id)
        watcher = Observer(
            mosquitto,
            key_file,
            cert_file,
            topic=topic,
            qos=qos,
            client_id=client_id,
            protocol=protocol,
        )
        started.append(watcher.start())
        return watcher

    yield start
    for watcher in started:
        watcher.stop()
