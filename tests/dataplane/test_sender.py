"""The sender in-process against a real mosquitto: what only shows over time on a live link."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections import Counter
from pathlib import Path

from support.mqtt import FixtureCA
from support.mqtt_peer import mqtt_peer
from support.wait import log_count, wait_until_async

from elf_async.controlplane.certs import generate_key, key_pem
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.dataplane.sender import Publisher, Sender, Shared, Snapshot
from elf_async.files import write_private, write_public
from elf_async.local.mosquitto import Mosquitto
from elf_async.stopping import StopSignal


async def test_an_idle_publisher_is_kept_alive_without_its_own_timer_task(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """aiomqtt's per-client keep-alive task is replaced by one pass a second for all
    publishers. A publisher that sent its first message and idles (the next is ten minutes
    away) must still send a PINGREQ each keep-alive, and paho must get the PINGRESPs: it
    drops a connection whose PINGRESP has not come by the next keep-alive, so three answered
    PINGREQs on one connection, with no reconnect, prove both directions."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "idle-thing")
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=10.0, timeout=10.0, retries=0, keepalive=2)
    shared = Shared()
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    publisher = Publisher(
        Identity("idle-thing", 0, key_file, cert_file),
        "elf/idle-thing",
        ThingSchedule(rate=1 / 600, phase=0.0, total=2),
        spec.encoder("idle-thing"),
        qos=1,
        window=10,
        shared=shared,
    )

    def pings_answered() -> int:
        return log_count(mosquitto.log_file, r"Sending PINGRESP to idle-thing$")

    with StopSignal() as stop:
        sending = asyncio.create_task(Sender([publisher], connector, shared, drain=5.0).run(stop))
        await wait_until_async(lambda: pings_answered() >= 3, what="three answered PINGREQs")
        os.kill(os.getpid(), signal.SIGINT)  # taken by StopSignal's handler
        result = await sending

    assert connector.reconnects == 0, connector.errors
    assert log_count(mosquitto.log_file, r"New client connected .* as idle-thing ") == 1
    assert log_count(mosquitto.log_file, r"Received PINGREQ from idle-thing$") >= 3
    assert (publisher.published, publisher.acked, publisher.failed) == (1, 1, 0)
    assert result.outcome == "interrupted"


async def test_a_mixed_rsa_and_ec_fleet_connects_each_thing_with_its_own_certificate(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """TLS contexts are shared between things (elf_async.mqtt.ClientTls): every thing must
    still present its own certificate. mosquitto names each client by its certificate's CN
    (use_identity_as_username), and the CN is the thing name."""
    things = []
    for index in range(12):
        name = f"mixed-{index:02d}"
        key = generate_key("rsa" if index % 2 else "ec")
        key_file, cert_file = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
        write_private(key_file, key_pem(key))
        write_public(cert_file, test_ca.ca.sign(key.public_key(), name))
        things.append(Identity(name, index, key_file, cert_file))
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=1000.0, timeout=10.0, retries=0)

    links = await asyncio.gather(*(connector.open(thing) for thing in things))
    try:
        log = mosquitto.log_file.read_text()
        presented = dict(re.findall(r" as (mixed-\d+) \(.*?u'([^']*)'\)", log))
        assert presented == {thing.name: thing.name for thing in things}
    finally:
        await asyncio.gather(*(link.close() for link in links))


async def test_every_connection_has_nagle_off(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """A load generator writes a message when it is due: TCP_NODELAY, set once per connection,
    so a small write never waits for the ACK of the previous segment (paho leaves Nagle on)."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "nodelay")
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=10.0, timeout=10.0, retries=0)
    link = await connector.open(Identity("nodelay", 0, key_file, cert_file))
    try:
        sock = link.paho.socket()
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await link.close()


async def test_a_qos0_send_across_many_keepalives_never_wakes_the_writer_for_nothing(
    mosquitto: Mosquitto, test_ca: FixtureCA, tmp_path: Path
) -> None:
    """At QoS 0 nothing comes back, so paho sends a PINGREQ every keep-alive (1 s here) while
    the Wire writes PUBLISHes: the writer must be registered exactly while something waits to
    be written. It used to stay registered after a PINGREQ, firing on every loop pass. The
    send runs until the broker has answered three PINGREQs from every thing."""
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=1000.0, timeout=10.0, retries=0, keepalive=1)
    shared = Shared()
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    publishers = []
    for index in range(20):
        name = f"ka-{index:02d}"
        key_file, cert_file = test_ca.client_cert(tmp_path, name)
        publishers.append(
            Publisher(
                Identity(name, index, key_file, cert_file),
                f"elf/{name}",
                ThingSchedule(rate=20.0, phase=index / 400, total=20 * 600),
                spec.encoder(name),
                qos=0,
                window=10,
                shared=shared,
            )
        )

    def every_thing_pinged_thrice() -> bool:
        text = mosquitto.log_file.read_text(errors="replace")
        answered = Counter(re.findall(r"Sending PINGRESP to (ka-\d\d)$", text, re.MULTILINE))
        return len(answered) == 20 and min(answered.values()) >= 3

    with StopSignal() as stop:
        sending = asyncio.create_task(Sender(publishers, connector, shared, drain=5.0).run(stop))
        await wait_until_async(every_thing_pinged_thrice, what="three PINGRESPs to every thing")
        os.kill(os.getpid(), signal.SIGINT)  # taken by StopSignal's handler
        await sending

    assert connector.reconnects == 0, connector.errors
    assert all(0 < p.published == p.scheduled for p in publishers)
    wires = [p.wire for p in publishers]
    assert None not in wires  # each still has the Wire that wrote its last connection
    idle = sum(wire.idle_writes for wire in wires if wire is not None)
    assert idle == 0, f"the writer fired {idle} times with nothing to write"


async def test_a_thing_that_never_connected_owes_what_fell_due_until_the_stop(
    mosquitto: Mosquitto, test_ca: FixtureCA, rogue_ca: FixtureCA, tmp_path: Path
) -> None:
    """One thing connects, one is refused (a certificate from a CA the broker distrusts);
    Ctrl-C once a second has passed: the refused thing owes what fell due by then, as the
    connected one had to send it, not its whole schedule and not nothing."""
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=100.0, timeout=10.0, retries=0)
    shared = Shared()
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    publishers = []
    for index, (name, ca) in enumerate([("good-thing", test_ca), ("refused-thing", rogue_ca)]):
        key_file, cert_file = ca.client_cert(tmp_path, name)
        publishers.append(
            Publisher(
                Identity(name, index, key_file, cert_file),
                f"elf/{name}",
                ThingSchedule(rate=20.0, phase=index / 40, total=20 * 600),
                spec.encoder(name),
                qos=1,
                window=100,
                shared=shared,
            )
        )
    good, refused = publishers

    with StopSignal() as stop:

        def interrupt_once_sending(snapshot: Snapshot) -> None:
            if snapshot.totals.acked and not stop.event.is_set():
                os.kill(os.getpid(), signal.SIGINT)  # taken by StopSignal's handler

        sender = Sender(publishers, connector, shared, drain=5.0, on_tick=interrupt_once_sending)
        result = await sender.run(stop)

    assert result.outcome == "interrupted"
    assert refused.error is not None
    assert good.error is None
    assert (refused.published, refused.acked, refused.failed) == (0, 0, 0)
    assert 0 < refused.scheduled < refused.schedule.total
    assert abs(refused.scheduled - good.scheduled) <= 1  # one open-loop schedule for both
    totals = result.totals()
    assert totals.acked <= totals.published <= totals.scheduled
    assert totals.scheduled - totals.published >= refused.scheduled


async def test_a_connection_that_never_comes_back_is_named_and_leaves_no_noise(
    test_ca: FixtureCA, tmp_path: Path
) -> None:
    """The broker drops a publisher mid-send and never comes back. The old connection's
    aiomqtt error must be collected: otherwise asyncio prints "Future exception was never
    retrieved" when it is garbage-collected (the autouse fixture fails the test on it)."""
    with mqtt_peer(test_ca, tmp_path) as peer:
        endpoint = Endpoint("127.0.0.1", peer.port, test_ca.cert_file.read_text())
        connector = Connector(endpoint, rate=100.0, timeout=5.0, retries=0)
        shared = Shared()
        spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
        key_file, cert_file = test_ca.client_cert(tmp_path, "dropped-thing")
        publisher = Publisher(
            Identity("dropped-thing", 0, key_file, cert_file),
            "elf/dropped-thing",
            ThingSchedule(rate=20.0, phase=0.0, total=20 * 600),
            spec.encoder("dropped-thing"),
            qos=1,
            window=100,
            shared=shared,
        )
        with StopSignal() as stop:

            def drop_then_stop(snapshot: Snapshot) -> None:
                if connector.reconnect_attempts and not stop.event.is_set():
                    os.kill(os.getpid(), signal.SIGINT)  # the loss was seen: enough
                elif snapshot.totals.acked and publisher.link is not None:
                    peer.drop()

            sender = Sender([publisher], connector, shared, drain=1.0, on_tick=drop_then_stop)
            await sender.run(stop)
    assert any(reason.startswith("connection lost") for reason in connector.errors)
    assert publisher.acked <= publisher.published <= publisher.scheduled
    # Attempts are not reconnections: none succeeded, and the thing says why it stopped.
    assert connector.reconnect_attempts >= 1
    assert (connector.reconnects, publisher.reconnects) == (0, 0)
    assert publisher.error is not None
    assert publisher.error.startswith("lost its connection and never got it back")
