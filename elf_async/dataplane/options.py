"""The connection options of `send` and `subscribe`, checked against AWS IoT's data-plane limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elf_async.dataplane.mqtt import KEEPALIVE, parse_endpoint
from elf_async.errors import UsageError
from elf_async.units import parse_rate

AWS_CONNECT_PER_S = 500.0  # per account
AWS_PUBLISH_PER_S = 100.0  # per connection
AWS_MAX_INFLIGHT = 100  # unacknowledged QoS 1 messages per client
AWS_KEEPALIVE_S = (30, 1200)  # AWS clamps the keep-alive to this range


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """The connection options of `send` and `subscribe`, as given on the command line."""

    mqtt_endpoint: str | None = None
    port: int | None = None
    ca_file: Path | None = None
    connect_rate: str = "100/s"
    connect_timeout: float = 10.0
    connect_retries: int = 3
    keepalive: int = KEEPALIVE  # seconds
    allow_over_aws_limits: bool = False

    def __post_init__(self) -> None:
        low, high = AWS_KEEPALIVE_S
        if self.keepalive < 1 or self.keepalive > 65535:
            raise UsageError(f"--keepalive {self.keepalive}s: MQTT allows 1 to 65535 seconds")
        if not low <= self.keepalive <= high and not self.allow_over_aws_limits:
            raise UsageError(
                f"--keepalive {self.keepalive}s: AWS IoT clamps the keep-alive to {low}-{high} s "
                "(pass --allow-over-aws-limits to use it anyway, e.g. against a local broker)"
            )

    def connect_per_s(self) -> float:
        rate = parse_rate(self.connect_rate, what="--connect-rate")
        if rate > AWS_CONNECT_PER_S and not self.allow_over_aws_limits:
            raise UsageError(
                f"--connect-rate {self.connect_rate}: AWS IoT allows {AWS_CONNECT_PER_S:.0f} "
                "connects/s per account (pass --allow-over-aws-limits to go beyond)"
            )
        return rate

    def explicit_endpoint(self) -> tuple[str, int | None] | None:
        """(host, port) from --mqtt-endpoint, checked against --port."""
        if self.port is not None and not 0 < self.port < 65536:
            raise UsageError(f"--port {self.port} is out of range")
        if self.mqtt_endpoint is None:
            return None
        host, port = parse_endpoint(self.mqtt_endpoint)
        if port is not None and self.port is not None and port != self.port:
            raise UsageError(f"--mqtt-endpoint says port {port} but --port says {self.port}")
        return host, port
