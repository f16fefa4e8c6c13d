"""Connecting a fleet cheaply: contexts shared, the endpoint resolved once, TLS sessions resumed.

Every test connects to a real mosquitto with mutual TLS (tests/support/mqtt.py). mosquitto
names each connection's user by its certificate's CN (use_identity_as_username), which is
how a test sees which certificate a connection presented.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from support.mqtt import FixtureCA, start_mosquitto

from elf_async.controlplane.certs import generate_key, key_pem
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.mqtt import ClientTls, Link, connect
from elf_async.errors import UsageError
from elf_async.files import write_private, write_public
from elf_async.local.mosquitto import Mosquitto


def _connector(broker: Mosquitto, *, host: str = "127.0.0.1") -> Connector:
    endpoint = Endpoint(host, broker.port, broker.ca_file.read_text())
    return Connector(endpoint, rate=1000.0, timeout=10.0, retries=0)


def _presented(broker: Mosquitto, prefix: str) -> dict[str, str]:
    """client id -> the CN of the certificate it connected with, from mosquitto's log."""
    log = broker.log_file.read_text()
    return dict(re.findall(rf" as ({prefix}-\d+) \(.*?u'([^']*)'\)", log))


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def _close(links: list[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links))


async def test_a_shared_identity_connects_every_device_on_one_context_built_once(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """All at once: the first connect goes alone, the others resume its TLS session."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "elf-shared-identity")
    devices = [Identity(f"dev-{i:03d}", i, key_file, cert_file, shared=True) for i in range(30)]
    connector = _connector(mosquitto)
    before = connector.tls.contexts_built

    links = await asyncio.gather(*(connector.open(device) for device in devices))
    try:
        assert connector.tls.contexts_built - before == 1
        assert _presented(mosquitto, "dev") == {d.name: "elf-shared-identity" for d in devices}
        assert (connector.succeeded, connector.resumed) == (30, 29)
    finally:
        await _close(links)


async def test_things_of_their_own_share_one_context_per_key_kind(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    things = []
    for index in range(10):
        name = f"own-{index:02d}"
        key = generate_key("rsa" if index % 2 else "ec")
        key_file, cert_file = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        write_private(key_file, key_pem(key))
        write_public(cert_file, test_ca.ca.sign(key.public_key(), name))
        things.append(Identity(name, index, key_file, cert_file))
    connector = _connector(mosquitto)
    before = connector.tls.contexts_built

    links = await asyncio.gather(*(connector.open(thing) for thing in things))
    try:
        assert connector.tls.contexts_built - before == 2  # one EC, one RSA
        assert _presented(mosquitto, "own") == {t.name: t.name for t in things}
    finally:
        await _close(links)


async def test_the_endpoint_name_is_resolved_once_for_all_connects(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    things = []
    for index in range(5):
        key_file, cert_file = test_ca.client_cert(tmp_path, f"dns-{index}")
        things.append(Identity(f"dns-{index}", index, key_file, cert_file))
    connector = _connector(mosquitto, host="localhost")

    links = await asyncio.gather(*(connector.open(thing) for thing in things))
    try:
        assert connector.resolutions == 1
        assert connector.succeeded == 5
    finally:
        await _close(links)


async def test_an_address_that_refuses_is_skipped_for_the_next_one(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """A name over several addresses (a load balancer's, or localhost's ::1 where the broker
    listens on 127.0.0.1 only): a connect that one refuses goes on to the next."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "skip-0")
    tls = ClientTls(ca_pem=mosquitto.ca_file.read_text(), alpn=False)
    link = await connect(
        host="localhost",
        port=mosquitto.port,
        addresses=[
            (socket.AF_INET, ("127.0.0.1", _closed_port())),
            (socket.AF_INET, ("127.0.0.1", mosquitto.port)),
        ],
        client_id="skip-0",
        tls=tls.identity(cert_file=cert_file, key_file=key_file),
        within=10,
    )
    try:
        assert _presented(mosquitto, "skip") == {"skip-0": "skip-0"}
    finally:
        await link.close()


async def test_an_unresolvable_endpoint_is_a_permanent_failure_that_names_it(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    key_file, cert_file = test_ca.client_cert(tmp_path, "nowhere")
    connector = _connector(mosquitto, host="no-such-host.invalid")

    with pytest.raises(Exception, match="cannot resolve the MQTT endpoint") as raised:
        await connector.open(Identity("nowhere", 0, key_file, cert_file))
    assert getattr(raised.value, "permanent", False)


async def test_a_thing_of_its_own_reconnects_with_a_full_handshake(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """No session is kept per thing (reading one costs every first connect; see ClientTls)."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "again-0")
    thing = Identity("again-0", 0, key_file, cert_file)
    connector = _connector(mosquitto)

    first = await connector.open(thing)
    await first.close()
    second = await connector.open(thing)
    try:
        assert (first.resumed, second.resumed, connector.resumed) == (False, False, 0)
        log = mosquitto.log_file.read_text()
        assert len(re.findall(r" as again-0 \(.*?u'again-0'\)", log)) == 2
    finally:
        await second.close()


async def test_devices_of_a_shared_identity_resume_each_others_sessions(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    key_file, cert_file = test_ca.client_cert(tmp_path, "elf-shared-resume")
    devices = [Identity(f"res-{i}", i, key_file, cert_file, shared=True) for i in range(4)]
    connector = _connector(mosquitto)

    links = [await connector.open(device) for device in devices]  # one after the other
    await links[0].close()
    links[0] = await connector.open(devices[0])  # a reconnect
    try:
        assert [link.resumed for link in links] == [True, True, True, True]
        assert connector.resumed == 4
        # Resumed, each connection still carries the identity's certificate (its CN).
        assert _presented(mosquitto, "res") == {d.name: "elf-shared-resume" for d in devices}
    finally:
        await _close(links)


async def test_after_a_broker_restart_a_shared_identity_reconnects_and_resumes_again(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """The restarted broker refuses the session kept from before: the connect falls back to a
    full handshake instead of failing, and the next one resumes the new session."""
    broker = start_mosquitto(tmp_path / "first", test_ca)
    key_file, cert_file = test_ca.client_cert(tmp_path, "elf-shared-restart")
    devices = [Identity(f"rst-{i}", i, key_file, cert_file, shared=True) for i in range(2)]
    connector = _connector(broker)
    try:
        for device in devices:
            await (await connector.open(device)).close()
    finally:
        broker.stop()
    assert connector.resumed == 1
    restarted = start_mosquitto(tmp_path / "second", test_ca, port=broker.port)
    try:
        links = [await connector.open(device) for device in devices]
        assert [link.resumed for link in links] == [False, True]
        assert connector.succeeded == 4
        await _close(links)
    finally:
        restarted.stop()


async def test_a_missing_key_is_a_usage_error_and_a_later_thing_still_connects(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """A failed load leaves no stray certificate in the shared context."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "lost-0")
    key_file.unlink()
    good_key, good_cert = test_ca.client_cert(tmp_path, "fine-0")
    connector = _connector(mosquitto)

    with pytest.raises(UsageError, match="missing"):
        await connector.open(Identity("lost-0", 0, key_file, cert_file))
    link = await connector.open(Identity("fine-0", 1, good_key, good_cert))
    try:
        assert _presented(mosquitto, "fine") == {"fine-0": "fine-0"}
    finally:
        await link.close()


async def test_when_a_shared_identitys_first_connect_fails_the_others_do_not_wait_forever(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """The others wait for the first connect's session: its failure must release them (they
    then fail for the same reason, not after their timeout)."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "elf-shared-down")
    endpoint = Endpoint("127.0.0.1", _closed_port(), test_ca.cert_file.read_text())
    connector = Connector(endpoint, rate=1000.0, timeout=30.0, retries=0)
    devices = [Identity(f"down-{i}", i, key_file, cert_file, shared=True) for i in range(5)]

    outcomes = await asyncio.gather(
        *(connector.open(device) for device in devices), return_exceptions=True
    )
    assert [str(outcome) for outcome in outcomes] == [
        "connection refused (is the broker running?)"
    ] * 5


async def test_connects_under_way_at_once_are_bounded_whatever_the_rate(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """A rate above what the client can finish must not pile connects up inside the loop
    (their CONNACKs would be handled past the keep-alive): at most `in_flight` are under way,
    the next starts when one ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    listener.setblocking(False)
    ca_pem = test_ca.cert_file.read_text()
    connector = Connector(
        Endpoint("127.0.0.1", listener.getsockname()[1], ca_pem),
        rate=1_000_000.0,
        timeout=30.0,
        retries=0,
        in_flight=3,
    )
    things = []
    for index in range(5):
        key_file, cert_file = test_ca.client_cert(tmp_path, f"bound-{index}")
        things.append(Identity(f"bound-{index}", index, key_file, cert_file))
    opening = [asyncio.ensure_future(connector.open(thing)) for thing in things]
    try:
        while len(accepted) < 3:  # a server that accepts and never answers the handshake
            accepted.append((await loop.sock_accept(listener))[0])
        assert connector.attempted == 3
        for sock in accepted[:2]:
            sock.close()  # two connects fail: two more may start
        while len(accepted) < 5:
            accepted.append((await loop.sock_accept(listener))[0])
        assert connector.attempted == 5
    finally:
        for sock in accepted:
            sock.close()
        listener.close()
        await asyncio.gather(*opening, return_exceptions=True)
