"""The Wire's MQTT 5 framing on a real TLS socket pair (test_takeover's `pair`): the properties
block after the packet id, the topic alias (the topic once, then an empty one), PUBACKs with a
reason code, decoded with paho's own parser, not the Wire's."""

from __future__ import annotations

import paho.mqtt.client as paho
from dataplane import test_takeover
from dataplane.test_takeover import Pair
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from elf_async.dataplane.mqtt5 import Publish5
from elf_async.dataplane.takeover import Wire

pair = test_takeover.pair  # the fixture: a paho client on one end of a TLS pair


def _read_publish(pair: Pair) -> tuple[int, bytes]:
    """One PUBLISH read on the peer's side: its first byte and its body."""
    first = pair.read_exactly(1)[0]
    length, shift = 0, 0
    while True:
        digit = pair.read_exactly(1)[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    return first, pair.read_exactly(length)


def _parse(body: bytes, *, qos: int) -> tuple[str, int | None, Properties, bytes]:
    """topic, packet id, properties and payload of an MQTT 5 PUBLISH body."""
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2 : 2 + topic_length].decode()
    pos = 2 + topic_length
    mid = None
    if qos:
        mid, pos = int.from_bytes(body[pos : pos + 2], "big"), pos + 2
    properties, length = Properties(PacketTypes.PUBLISH).unpack(body[pos:])
    return topic, mid, properties, body[pos + length :]


async def test_mqtt_5_publishes_carry_the_properties_and_the_alias_after_the_first(
    pair: Pair,
) -> None:
    spec = Publish5(user_properties=(("team", "load"),), message_expiry=30, topic_alias=True)
    wire: Wire[int] = Wire(
        pair.client,
        "elf/a-long-topic",
        1,
        on_ack=lambda mid: None,
        on_sent=lambda batch, start, stop: None,
        on_drained=lambda: None,
        properties=spec.block(alias=True),
        aliased=True,
    )
    for mid, payload in ((1, b"one"), (2, b"two"), (3, b"three")):
        wire.publish(payload, mid)
    wire.send(0)
    seen = []
    for _ in range(3):
        first, body = _read_publish(pair)
        assert first == 0x32  # PUBLISH, QoS 1
        seen.append(_parse(body, qos=1))
    assert [(topic, mid, payload) for topic, mid, _, payload in seen] == [
        ("elf/a-long-topic", 1, b"one"),
        ("", 2, b"two"),
        ("", 3, b"three"),
    ]
    for _, _, properties, _ in seen:
        assert properties.TopicAlias == 1
        assert properties.MessageExpiryInterval == 30
        assert properties.UserProperty == [("team", "load")]


async def test_mqtt_5_qos_0_has_no_packet_id_and_no_alias_unless_asked(pair: Pair) -> None:
    wire: Wire[int] = Wire(
        pair.client,
        "elf/t",
        0,
        on_ack=lambda mid: None,
        on_sent=lambda batch, start, stop: None,
        on_drained=lambda: None,
        properties=Publish5().block(alias=False),
    )
    wire.publish(b"x" * 300, 9)  # a two-byte remaining length
    wire.publish(b"y", 10)
    wire.send(0)
    for payload in (b"x" * 300, b"y"):
        first, body = _read_publish(pair)
        assert first == 0x30
        topic, mid, properties, got = _parse(body, qos=0)
        assert (topic, mid, got) == ("elf/t", None, payload)
        assert properties.json() == {}


async def test_a_puback_reason_code_of_0x80_or_more_refuses_the_message(pair: Pair) -> None:
    acked: list[int] = []
    refused: list[tuple[int, int]] = []
    wire: Wire[int] = Wire(
        pair.client,
        "elf/t",
        1,
        on_ack=acked.append,
        on_sent=lambda batch, start, stop: None,
        on_drained=lambda: None,
        properties=Publish5().block(alias=False),
        on_refused=lambda mid, code: refused.append((mid, code)),
    )
    for mid in range(1, 6):
        wire.publish(b"m", mid)
    wire.send(0)
    reason_string = b"\x1f\x00\x06denied"
    pair.peer.sendall(
        b"\x40\x02\x00\x01"  # Success, no reason code (the 3.1.1 form)
        + b"\x40\x03\x00\x02\x10"  # No matching subscribers: a success
        + b"\x40\x03\x00\x03\x87"  # Not authorized
        + b"\x40"
        + bytes([4 + len(reason_string)])
        + b"\x00\x04\x97"
        + bytes([len(reason_string)])
        + reason_string  # Quota exceeded, with a reason string
        + b"\x40\x02\x00\x05"
    )
    while len(acked) + len(refused) < 5:
        pair.wait_readable()
        assert pair.client.loop_read() == paho.MQTT_ERR_SUCCESS
    assert acked == [1, 2, 5]
    assert refused == [(3, 0x87), (4, 0x97)]
    assert wire.outstanding == 0
