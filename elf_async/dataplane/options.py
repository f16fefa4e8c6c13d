"""The connection options of `send` and `subscribe`, and AWS IoT's data-plane limits that the
command line checks them against (elf_async.cli._options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elf_async.dataplane.auth import AuthKind, CustomAuth, Transport
from elf_async.dataplane.mqtt5 import MQTT_311, MqttVersion
from elf_async.errors import UsageError

AWS_CONNECT_PER_S = 500.0  # per account
AWS_PUBLISH_PER_S = 100.0  # per connection
AWS_ACCOUNT_PUBLISH_PER_S = 20_000.0  # inbound publishes per account (a default quota)
AWS_MAX_INFLIGHT = 100  # unacknowledged QoS 1 messages per client
MQTT_PACKET_IDS = 65535  # QoS 1 packet ids: never more in flight on one connection
AWS_KEEPALIVE_S = (30, 1200)  # AWS clamps the keep-alive to this range
MAX_RUN_S = 7 * 24 * 3600.0  # a send or a subscribe lasts at most 7 days: longer is a typo

Qos = Literal[0, 1]  # AWS IoT has no QoS 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    """How `send` and `subscribe` connect, parsed and checked: seconds, connects per second."""

    mqtt_host: str | None  # --mqtt-endpoint; None: the local stack, the cache, DescribeEndpoint
    port: int | None  # --port, or the port of --mqtt-endpoint
    ca_file: Path | None
    connect_per_s: float
    connect_timeout: float
    connect_retries: int
    keepalive: int  # whole seconds
    allow_over_aws_limits: bool
    mqtt_version: MqttVersion = MQTT_311  # --mqtt
    transport: Transport = "mqtts"  # --transport
    auth: AuthKind = "x509"  # --auth: x509, sigv4 (wss), custom (then `custom` says which)
    custom: CustomAuth | None = None


def check_publish_rate(per_thing: float, *, allow_over_aws_limits: bool) -> None:
    """Refuse a pace AWS IoT would drop publishes at, unless told to go beyond its limits."""
    if per_thing > AWS_PUBLISH_PER_S and not allow_over_aws_limits:
        raise UsageError(
            f"{per_thing:g} messages/s per thing: AWS IoT drops publishes above "
            f"{AWS_PUBLISH_PER_S:.0f}/s per connection (use more --things, or pass "
            "--allow-over-aws-limits)"
        )


def check_account_publish_rate(
    total_per_s: float, *, shards: int = 1, allow_over_aws_limits: bool
) -> None:
    """Refuse a send whose things together publish above the account's share it may use:
    AWS_ACCOUNT_PUBLISH_PER_S, split evenly over `shards` (each runs this check on its own)."""
    budget = AWS_ACCOUNT_PUBLISH_PER_S / shards
    if total_per_s > budget * (1 + 1e-9) and not allow_over_aws_limits:
        whole = f"{AWS_ACCOUNT_PUBLISH_PER_S:.0f}/s"
        share = f" (1/{shards} of the account's {whole})" if shards > 1 else ""
        raise UsageError(
            f"{total_per_s:g} publishes/s in all: AWS IoT allows {budget:g}/s{share} by default "
            "(ask AWS for a quota increase, then pass --allow-over-aws-limits)"
        )


def check_send_length(count: int | None, per_thing: float) -> None:
    """Refuse a --count that would take longer than MAX_RUN_S at this pace (like --duration):
    --count 99999999999999999999 is a typo, not a run that should go on for ever."""
    if count is not None and count / per_thing > MAX_RUN_S:
        raise UsageError(
            f"--count {count} at {per_thing:g} messages/s per thing takes "
            f"{count / per_thing / 86400:.3g} days: a send lasts at most 7 days "
            f"(at most --count {int(MAX_RUN_S * per_thing)} at this rate)"
        )
