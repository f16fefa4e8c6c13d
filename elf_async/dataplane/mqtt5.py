"""MQTT 5 for the hot path: the version chosen, a PUBLISH's properties encoded once, reason codes.

Pure logic, no I/O. The Wire (elf_async.dataplane.takeover) frames every PUBLISH of a
connection with one properties block computed here once per connection (`Publish5.block`):
user properties, the message expiry and, with `--topic-alias`, the topic alias, which only the
first PUBLISH of a connection sends with its topic (the later ones send an empty topic). A
PUBACK of MQTT 5 may carry a reason code: `puback` reads it; one of 0x80 or more refuses the
message (it failed), named by `reason_label` for the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from elf_async.errors import UsageError

MqttVersion = Literal["3.1.1", "5"]
MQTT_311: MqttVersion = "3.1.1"
MQTT_5: MqttVersion = "5"
# paho's protocol numbers (paho.mqtt.client.MQTTv311, MQTTv5): the level in CONNECT.
PROTOCOL_LEVEL: dict[MqttVersion, int] = {MQTT_311: 4, MQTT_5: 5}

# Property identifiers (MQTT 5.0, 2.2.2.2) used in a PUBLISH.
MESSAGE_EXPIRY = 0x02
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
ALIAS = 1  # a publisher publishes on one topic: alias 1 is all it needs

FAILED = 0x80  # a reason code of 0x80 or more is a failure

# Reason codes of CONNACK and PUBACK (MQTT 5.0, 2.4), by value.
REASON_NAMES: dict[int, str] = {
    0x00: "Success",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8C: "Bad authentication method",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x97: "Quota exceeded",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}


def parse_version(text: str) -> MqttVersion:
    """--mqtt: 3.1.1 (the default) or 5."""
    for version in (MQTT_311, MQTT_5):
        if text.strip() == version:
            return version
    raise UsageError(f"--mqtt {text}: the MQTT version is 3.1.1 or 5")


def parse_user_property(text: str) -> tuple[str, str]:
    """--user-property KEY=VALUE (the value may be empty, the key may not)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise UsageError(f"--user-property {text!r}: not KEY=VALUE")
    return key, value


def reason_label(code: int) -> str:
    """``0x87 Not authorized``: a reason code as the report counts it."""
    return f"0x{code:02X} {REASON_NAMES.get(code, 'unknown reason')}"


_CODE = re.compile(r"\[code:(\d+)\]")


def connack_refusal(text: str) -> str:
    """A refused CONNACK as aiomqtt words it (``[code:135] Not authorized``), with its reason
    code in hex and its name: ``CONNACK 0x87 Not authorized``. Other text stays as it is."""
    match = _CODE.search(text)
    if match is None:
        return text
    return f"CONNACK {reason_label(int(match.group(1)))}"


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (a packet's remaining length, a properties block's)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    encoded = text.encode()
    return len(encoded).to_bytes(2, "big") + encoded


@dataclass(frozen=True, slots=True)
class Publish5:
    """What every PUBLISH of an MQTT 5 send carries (it pickles: `send --workers` shares it)."""

    user_properties: tuple[tuple[str, str], ...] = ()
    message_expiry: int | None = None  # seconds
    topic_alias: bool = False  # --topic-alias: the topic once, then alias 1

    def block(self, *, alias: bool) -> bytes:
        """The properties block (its length first) of every PUBLISH of one connection; `alias`:
        with the topic alias (the broker allows one)."""
        body = bytearray()
        if self.message_expiry is not None:
            body += bytes([MESSAGE_EXPIRY]) + self.message_expiry.to_bytes(4, "big")
        if alias:
            body += bytes([TOPIC_ALIAS]) + ALIAS.to_bytes(2, "big")
        for key, value in self.user_properties:
            body += bytes([USER_PROPERTY]) + _utf8(key) + _utf8(value)
        return remaining_length(len(body)) + bytes(body)

    def aliased(self, topic_alias_maximum: int) -> bool:
        """Whether this connection's PUBLISHes use the alias: asked for, and the broker's
        CONNACK allows at least one (Topic Alias Maximum; 0 or absent: none)."""
        return self.topic_alias and topic_alias_maximum >= ALIAS


def puback(body: bytes | bytearray | memoryview) -> tuple[int, int]:
    """A PUBACK's packet id and reason code (0: none given, Success); its properties (a reason
    string, user properties) are skipped."""
    mid = body[0] << 8 | body[1]
    return mid, body[2] if len(body) > 2 else 0


def topic_alias_maximum(properties: Any) -> int:
    """The CONNACK's Topic Alias Maximum (paho's `Properties`, or None): 0 when absent."""
    return int(getattr(properties, "TopicAliasMaximum", 0) or 0)


def reason_counts(refused: Mapping[int, int]) -> dict[str, int]:
    """The refusals by reason code, most frequent first, named for the report."""
    ranked = sorted(refused.items(), key=lambda item: (-item[1], item[0]))
    return {reason_label(code): count for code, count in ranked}


def shared_filter(group: str, topic_filter: str) -> str:
    """The shared subscription of `group` to `topic_filter`: ``$share/GROUP/FILTER``."""
    return f"$share/{group}/{topic_filter}"


def check_group(group: str) -> str:
    """--shared GROUP: a share name of at least one character, without ``/``, ``+``, ``#``."""
    if not group or any(c in group for c in "/+#") or not group.isprintable():
        raise UsageError(f"--shared {group!r}: a group name without '/', '+' or '#'")
    return group
