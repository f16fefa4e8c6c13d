"""The takeover's contract with the installed paho-mqtt and aiomqtt, checked by behaviour.

The hot path (elf_async/dataplane/takeover.py) leans on private parts of both; their versions
are pinned (elf_async/compat.py). Each test drives a real connection, made by elf-async's own
connect, to a minimal broker on a real TLS socket (tests/support/mqtt_peer.py) that records
what crossed the wire: if an upgrade moves what the takeover relies on, these fail.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from support.mqtt import FixtureCA
from support.mqtt_peer import DISCONNECT, EOF, PINGREQ, PUBLISH, MqttPeer, mqtt_peer

from elf_async.dataplane.mqtt import ClientTls, ConnectFailed, Link, connect
from elf_async.dataplane.takeover import PRIVATE_NAMES, Takeover, Wire

VERSIONS = f"paho-mqtt {version('paho-mqtt')}, aiomqtt {version('aiomqtt')}"
TOPIC = "elf/contract-thing"


@pytest.fixture
def peer(test_ca: FixtureCA, tmp_path: Path) -> Iterator[MqttPeer]:
    with mqtt_peer(test_ca, tmp_path) as broker:
        yield broker


async def _connect(peer: MqttPeer, ca: FixtureCA, tmp_path: Path, *, keepalive: int) -> Link:
    key_file, cert_file = ca.client_cert(tmp_path, "contract-thing")
    tls = ClientTls(ca_pem=ca.cert_file.read_text(), alpn=False)
    return await connect(
        host="127.0.0.1",
        port=peer.port,
        client_id="contract-thing",
        tls=tls.identity(cert_file=cert_file, key_file=key_file),
        within=10,
        keepalive=keepalive,
    )


def _install(
    takeover: Takeover,
    link: Link,
    *,
    qos: int = 1,
    on_ack: Callable[[int], None] = lambda mid: None,
    on_sent: Callable[[Any, int, int], None] = lambda batch, start, stop: None,
) -> Wire[Any]:
    return takeover.install(
        link.client, TOPIC, qos, on_ack=on_ack, on_sent=on_sent, on_drained=lambda: None
    )


async def _wait_at_peer(peer: MqttPeer, what: str, predicate: object) -> None:
    await asyncio.to_thread(peer.wait_for, what, predicate, 15)  # type: ignore[arg-type]


def test_every_private_name_the_takeover_lists_exists_on_the_installed_versions() -> None:
    """A precise message before the behaviour tests below fail less precisely."""
    tls = ssl.create_default_context().wrap_socket(
        __import__("socket").socket(), server_hostname="x", do_handshake_on_connect=False
    )
    owners = {
        "paho.mqtt.client.Client": paho.Client(CallbackAPIVersion.VERSION2),
        "ssl.SSLSocket": tls,
    }
    try:
        missing = [
            f"{owner}.{name}"
            for owner, names in PRIVATE_NAMES.items()
            if owner in owners
            for name in names
            if not hasattr(owners[owner], name)
        ]
    finally:
        tls.close()
    assert not missing, f"{VERSIONS} lacks {missing}: adapt elf_async/dataplane/takeover.py"


async def test_aiomqtt_client_has_the_names_the_takeover_lists() -> None:
    client = aiomqtt.Client("127.0.0.1")  # needs a running loop
    missing = [n for n in PRIVATE_NAMES["aiomqtt.Client"] if not hasattr(client, n)]
    assert not missing, f"{VERSIONS} lacks {missing}: adapt elf_async/dataplane/takeover.py"


@pytest.mark.parametrize("epoll", [True, False], ids=["epoll", "per-socket-readers"])
async def test_a_publish_goes_out_framed_and_its_puback_comes_back(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path, epoll: bool
) -> None:
    link = await _connect(peer, test_ca, tmp_path, keepalive=60)
    takeover = Takeover(epoll=epoll)
    acked: asyncio.Queue[int] = asyncio.Queue()
    sent: list[str] = []
    try:
        wire: Wire[str] = _install(
            takeover,
            link,
            on_ack=acked.put_nowait,
            on_sent=lambda batch, start, stop: sent.append(batch),
        )
        wire.publish(b"hello", 7)
        wire.send("batch")
        assert await asyncio.wait_for(acked.get(), 15) == 7
        assert sent == ["batch"]
        publish = next(p for p in peer.packets if p.command & 0xF0 == PUBLISH)
        assert publish.command == 0x32  # PUBLISH, QoS 1
        assert publish.body == len(TOPIC).to_bytes(2, "big") + TOPIC.encode() + b"\x00\x07hello"
        if not epoll:
            takeover.readers.read()  # a no-op without epoll: the loop read it
    finally:
        takeover.close()
        await link.close()


async def test_traffic_both_ways_keeps_the_connection_alive_without_pingreq(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """paho decides to ping from the last byte out and the last byte in: the Wire writes and
    reads past paho, so it must update exactly the names paho reads (paho 2.1 and 2.2 name
    them differently), or paho pings a busy connection."""
    link = await _connect(peer, test_ca, tmp_path, keepalive=1)
    takeover = Takeover()
    acked: asyncio.Queue[int] = asyncio.Queue()
    try:
        wire: Wire[int] = _install(takeover, link, on_ack=acked.put_nowait)
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.5  # three and a half keep-alives of continuous traffic
        mid = 0
        while loop.time() < until:
            mid = mid % 65535 + 1
            wire.publish(b"x", mid)
            wire.send(mid)
            assert await asyncio.wait_for(acked.get(), 15) == mid
        assert PINGREQ not in peer.kinds(), "paho pinged a connection that had traffic"
        assert not link.lost.done()
    finally:
        takeover.close()
        await link.close()


async def test_an_idle_connection_pings_and_the_pingresp_reaches_paho(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """The keep-alive pass writes the PINGREQs and the Wire reads the PINGRESPs, keeping
    paho's timers' state (`_ping_t`, last packet out and in) as paho would: were a PINGRESP
    not noted, paho would close the connection one keep-alive after its ping."""
    link = await _connect(peer, test_ca, tmp_path, keepalive=1)
    takeover = Takeover()
    through_paho: list[int] = []
    own_pingreq = link.paho._send_pingreq
    link.paho._send_pingreq = lambda: through_paho.append(1) or own_pingreq()  # type: ignore[method-assign]
    try:
        _install(takeover, link)
        await _wait_at_peer(peer, "three PINGREQs", lambda kinds: kinds.count(PINGREQ) >= 3)
        assert not link.lost.done(), link.lost.result()
        assert EOF not in peer.kinds()
        assert not through_paho, "the PINGREQs went through paho's packet queue"
    finally:
        takeover.close()
        await link.close()


async def test_a_broker_that_never_answers_pings_is_dropped_by_paho(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    with mqtt_peer(test_ca, tmp_path, answer_pings=False) as silent:
        link = await _connect(silent, test_ca, tmp_path, keepalive=1)
        takeover = Takeover()
        try:
            wire: Wire[int] = _install(takeover, link)
            reason = await asyncio.wait_for(link.lost, 15)
            assert wire.dead, reason
            assert PINGREQ in silent.kinds()
        finally:
            takeover.close()
            await link.close()


async def test_close_sends_disconnect_through_the_wire(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path
) -> None:
    link = await _connect(peer, test_ca, tmp_path, keepalive=60)
    takeover = Takeover()
    try:
        _install(takeover, link, qos=0)
        await link.close()
        await _wait_at_peer(
            peer, "DISCONNECT, then the end", lambda kinds: kinds[-2:] == [DISCONNECT, EOF]
        )
    finally:
        takeover.close()


async def test_the_broker_dropping_the_connection_reaches_the_link(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path
) -> None:
    link = await _connect(peer, test_ca, tmp_path, keepalive=60)
    takeover = Takeover()
    try:
        wire: Wire[int] = _install(takeover, link)
        peer.drop()
        reason = await asyncio.wait_for(link.lost, 15)
        assert wire.dead, reason
    finally:
        takeover.close()
        await link.close()


async def test_pubacks_that_arrive_with_the_close_still_count(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """The broker acknowledges two messages and closes: all of it is read in one call."""
    with mqtt_peer(test_ca, tmp_path, close_after_acks=2) as closing:
        link = await _connect(closing, test_ca, tmp_path, keepalive=60)
        takeover = Takeover()
        acked: list[int] = []
        try:
            wire = _install(takeover, link, on_ack=acked.append)
            wire.publish(b"a", 1)
            wire.publish(b"b", 2)
            wire.send(0)
            # Block the loop on purpose until the broker has acknowledged and closed, so
            # that the client reads the PUBACKs and the close in one go.
            assert closing.closed.wait(15), "the broker never got both messages"
            await asyncio.wait_for(link.lost, 15)
            assert acked == [1, 2]
        finally:
            takeover.close()
            await link.close()


async def test_a_connection_closed_right_after_its_connack_is_lost_not_connected_forever(
    test_ca: FixtureCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session takeover can close a connection before the task that awaited its CONNACK
    runs again: the link says it is lost (its keeper reconnects) instead of never resolving,
    and aiomqtt's disconnection error is read, not left for asyncio to log."""
    with mqtt_peer(test_ca, tmp_path, close_after_connack=True) as closing:
        try:
            link = await _connect(closing, test_ca, tmp_path, keepalive=60)
        except ConnectFailed:
            return  # the close came before the CONNACK was handled: a failed connect, also fine
        try:
            await asyncio.wait_for(link.lost, 15)
        finally:
            await link.close()
    del link
    gc.collect()  # an unread future's error is logged when the future is collected
    assert "never retrieved" not in caplog.text


async def test_a_link_does_not_hold_the_connack_properties(
    peer: MqttPeer, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """paho makes a Properties object for every CONNACK, 3.1.1 included; held for the run it
    was ~6 KB of RSS per idle connection at 5,000 (benchmarks/NOTES.md, session 6)."""

    def properties() -> int:
        gc.collect()
        return sum(isinstance(o, Properties) for o in gc.get_objects())

    before = properties()
    link = await _connect(peer, test_ca, tmp_path, keepalive=60)
    try:
        assert properties() == before
    finally:
        await link.close()
