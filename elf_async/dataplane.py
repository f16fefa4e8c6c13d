"""What `send` and `subscribe` share before any MQTT: the fleet's ready things as MQTT
identities, the broker endpoint (flag, local stack, cached, else DescribeEndpoint), its trust."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elf_async.aws import configured_region, connect
from elf_async.certs import thing_files
from elf_async.config import Settings, resolve_target
from elf_async.connections import Endpoint, Identity
from elf_async.errors import RuntimeFailure, UsageError
from elf_async.ledger import Ledger
from elf_async.mqtt import DEFAULT_PORT, KEEPALIVE, default_ca_file, parse_endpoint, read_ca
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


def ready_identities(
    ledger: Ledger, state_dir: Path, *, count: int | None, offset: int = 0
) -> list[Identity]:
    """The first `count` ready things after `offset` (all ready things without `count`)."""
    ready = [record for record in ledger.things() if record.ready]
    if not ready:
        raise UsageError(f"no ready things in {state_dir} (run `elf-async create` first)")
    wanted = len(ready) - offset if count is None else count
    if wanted <= 0 or offset + wanted > len(ready):
        raise UsageError(
            f"{offset + max(wanted, 1)} ready things needed, the fleet has {len(ready)}"
            + (f" (--things {count})" if count is not None else "")
        )
    identities = []
    for record in ready[offset : offset + wanted]:
        key_file, cert_file = thing_files(state_dir, record.name)
        identities.append(Identity(record.name, record.index, key_file, cert_file))
    missing = [i.name for i in identities if not (i.key_file.is_file() and i.cert_file.is_file())]
    if missing:
        raise UsageError(
            f"the key or certificate of {missing[0]} is missing from {state_dir / 'certs'}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return identities


async def resolve_endpoint(
    settings: Settings,
    ledger: Ledger,
    options: ConnectOptions,
    *,
    local: tuple[str, int, Path] | None = None,
) -> Endpoint:
    """Host, port and trusted CAs of the broker.

    The host comes from --mqtt-endpoint, else the local stack, else the ledger's cache, else
    DescribeEndpoint(iot:Data-ATS), whose answer is cached with the fleet.
    """
    explicit = options.explicit_endpoint()
    ca_file = options.ca_file
    if explicit is not None:
        host, port = explicit
    elif local is not None:
        host, port, local_ca = local
        ca_file = ca_file or local_ca
    else:
        meta = ledger.meta()
        cached = meta.get("mqtt_endpoint")
        if cached:
            host, port = cached, None
        else:
            host, port = await _describe_endpoint(settings, meta), None
            ledger.set_meta(mqtt_endpoint=host)
    ca_pem = read_ca(ca_file or default_ca_file())
    return Endpoint(host=host, port=options.port or port or DEFAULT_PORT, ca_pem=ca_pem)


async def _describe_endpoint(settings: Settings, meta: dict[str, str]) -> str:
    target = resolve_target(settings, meta, configured_region=configured_region(settings.profile))
    async with connect(target) as plane:
        answer = await plane.call("DescribeEndpoint", endpointType="iot:Data-ATS")
    host = answer.get("endpointAddress")
    if not isinstance(host, str) or not host:
        raise RuntimeFailure("DescribeEndpoint returned no endpointAddress")
    return host
