"""The connection options of `send` and `subscribe`, and AWS IoT's data-plane limits that the
command line checks them against (elf_async.cli._options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elf_async.errors import UsageError

AWS_CONNECT_PER_S = 500.0  # per account
AWS_PUBLISH_PER_S = 100.0  # per connection
AWS_MAX_INFLIGHT = 100  # unacknowledged QoS 1 messages per client
MQTT_PACKET_IDS = 65535  # QoS 1 packet ids: never more in flight on one connection
AWS_KEEPALIVE_S = (30, 1200)  # AWS clamps the keep-alive to this range

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


def check_publish_rate(per_thing: float, *, allow_over_aws_limits: bool) -> None:
    """Refuse a pace AWS IoT would drop publishes at, unless told to go beyond its limits."""
    if per_thing > AWS_PUBLISH_PER_S and not allow_over_aws_limits:
        raise UsageError(
            f"{per_thing:g} messages/s per thing: AWS IoT drops publishes above "
            f"{AWS_PUBLISH_PER_S:.0f}/s per connection (use more --things, or pass "
            "--allow-over-aws-limits)"
        )
