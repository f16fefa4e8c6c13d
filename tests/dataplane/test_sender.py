"""The sender in-process against a real mosquitto: what only shows over time on a live link."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path

from support.mqtt import FixtureCA

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
    publishers: with a 3 s keep-alive, mosquitto drops a client silent for 4.5 s (it checks
    lazily, within seconds), so 12 s between two messages pass without a reconnect only if
    PINGREQs go out meanwhile (paho sends one 3-4 s after the last packet)."""
    key_file, cert_file = test_ca.client_cert(tmp_path, "idle-thing")
    endpoint = Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text())
    connector = Connector(endpoint, rate=10.0, timeout=10.0, retries=0, keepalive=3)
    shared = Shared()
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    publisher = Publisher(
        Identity("idle-thing", 0, key_file, cert_file),
        "elf/idle-thing",
        ThingSchedule(rate=1 / 12, phase=0.0, total=2),
        spec.encoder("idle-thing"),
        qos=1,
        window=10,
        shared=shared,
    )
    result = await Sender([publisher], connector, shared, drain=5.0).run(StopSignal())

    assert connector.reconnects == 0, connector.errors
    assert (publisher.published, publisher.acked, publisher.failed) == (2, 2, 0)
    assert result.outcome == "completed"


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
    be written. It used to stay registered after a PINGREQ, firing on every loop pass."""
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
                ThingSchedule(rate=20.0, phase=index / 400, total=120),  # 6 s: six keep-alives
                spec.encoder(name),
                qos=0,
                window=10,
                shared=shared,
            )
        )
    await Sender(publishers, connector, shared, drain=5.0).run(StopSignal())

    assert connector.reconnects == 0, connector.errors
    assert [p.published for p in publishers] == [120] * 20
    idle = sum(p.wire.idle_writes for p in publishers if p.wire is not None)
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
            if snapshot.totals["acked"] and not stop.event.is_set():
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
    assert totals["acked"] <= totals["published"] <= totals["scheduled"]
    assert totals["scheduled"] - totals["published"] >= refused.scheduled
