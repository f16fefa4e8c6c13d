"""MQTT 5's pure parts (elf_async.dataplane.mqtt5): the properties block checked against paho's
own decoder, PUBACK and CONNACK reason codes, the options' parsing."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from elf_async.dataplane.mqtt5 import (
    Publish5,
    check_group,
    connack_refusal,
    parse_user_property,
    parse_version,
    puback,
    reason_counts,
    reason_label,
    shared_filter,
    topic_alias_maximum,
)
from elf_async.errors import UsageError


def _decoded(block: bytes) -> Properties:
    properties, length = Properties(PacketTypes.PUBLISH).unpack(block)
    assert length == len(block)  # the whole block, its length prefix included
    return properties


def test_the_properties_block_is_what_paho_decodes() -> None:
    spec = Publish5(
        user_properties=(("team", "load"), ("run", "a=b"), ("é", "")),
        message_expiry=3600,
        topic_alias=True,
    )
    decoded = _decoded(spec.block(alias=True))
    assert decoded.MessageExpiryInterval == 3600
    assert decoded.TopicAlias == 1
    assert decoded.UserProperty == [("team", "load"), ("run", "a=b"), ("é", "")]
    assert not hasattr(_decoded(spec.block(alias=False)), "TopicAlias")


def test_no_property_is_an_empty_block() -> None:
    assert Publish5().block(alias=False) == b"\x00"


def test_a_long_block_has_a_two_byte_length() -> None:
    block = Publish5(user_properties=(("k", "v" * 200),)).block(alias=False)
    assert block[0] & 0x80  # the variable-length integer goes on
    assert _decoded(block).UserProperty == [("k", "v" * 200)]


@pytest.mark.parametrize(
    ("asked", "maximum", "aliased"), [(True, 8, True), (True, 0, False), (False, 8, False)]
)
def test_the_alias_needs_the_option_and_the_broker_s_maximum(
    asked: bool, maximum: int, aliased: bool
) -> None:
    assert Publish5(topic_alias=asked).aliased(maximum) is aliased


def test_topic_alias_maximum_from_the_connack() -> None:
    properties = Properties(PacketTypes.CONNACK)
    assert topic_alias_maximum(properties) == 0
    properties.TopicAliasMaximum = 8
    assert topic_alias_maximum(properties) == 8
    assert topic_alias_maximum(None) == 0


def test_puback_packet_id_and_reason_code() -> None:
    assert puback(b"\x12\x34") == (0x1234, 0)
    assert puback(b"\x00\x07\x87") == (7, 0x87)
    assert puback(b"\x00\x07\x10\x00") == (7, 0x10)  # No matching subscribers: a success
    reason_string = b"\x1f\x00\x02no"
    assert puback(b"\x00\x09\x97" + bytes([len(reason_string)]) + reason_string) == (9, 0x97)


def test_reason_codes_are_named_and_ranked() -> None:
    assert reason_label(0x87) == "0x87 Not authorized"
    assert reason_label(0xFE) == "0xFE unknown reason"
    assert list(reason_counts({0x87: 2, 0x97: 5, 0x80: 2})) == [
        "0x97 Quota exceeded",
        "0x80 Unspecified error",
        "0x87 Not authorized",
    ]


def test_a_refused_connack_is_named() -> None:
    assert connack_refusal("[code:135] Not authorized") == "CONNACK 0x87 Not authorized"
    assert connack_refusal("something else") == "something else"


def test_options_parse_or_refuse_in_one_line() -> None:
    assert parse_version("5") == "5"
    assert parse_version("3.1.1") == "3.1.1"
    with pytest.raises(UsageError, match=r"--mqtt 4: the MQTT version is 3\.1\.1 or 5"):
        parse_version("4")
    assert parse_user_property("k=v=w") == ("k", "v=w")
    assert parse_user_property("k=") == ("k", "")
    for bad in ("novalue", "=v"):
        with pytest.raises(UsageError, match="not KEY=VALUE"):
            parse_user_property(bad)
    assert shared_filter(check_group("g1"), "elf/x") == "$share/g1/elf/x"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(UsageError, match="a group name without"):
            check_group(bad)
