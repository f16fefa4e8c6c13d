"""What the two elf-async peers share: the plan and setup exactly as `send` builds them, and the
result document. `elf_async_send` runs the plan in-process (`send --workers 1`),
`elf_async_workers` through `send --workers N`; neither imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.peers._common import PeerConfig
from elf_async.dataplane.auth import SigV4
from elf_async.dataplane.connections import Endpoint, Identity
from elf_async.dataplane.mqtt5 import MQTT_5, MQTT_311, PROTOCOL_LEVEL, Publish5
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, SendSetup, ThingPlan
from elf_async.dataplane.schedule import plan
from elf_async.dataplane.sender import Shared
from elf_async.dataplane.sigv4 import SigningKeys
from elf_async.dataplane.tally import Totals

CONNECT_PER_S = 1000.0  # connecting is untimed (before GO): as fast as the broker takes it
# Variants of the in-process peer (`elf_async:VARIANT`): MQTT 5, bare (an empty properties
# block: what the version itself costs) and with a user property and the topic alias.
MQTT5_VARIANTS: dict[str, Publish5] = {
    "mqtt5": Publish5(),
    "mqtt5props": Publish5(user_properties=(("run", "bench"),), topic_alias=True),
}


def send_plan(config: PeerConfig) -> SendPlan:
    """Every client as a thing, with the default stamped payload, as `send` plans it."""
    spec = build_spec(
        message=None, json_message=None, template=None, size=config.payload_size, stamp=None
    )
    schedules = plan(len(config.clients), config.rate, duration=config.seconds)
    return SendPlan(
        [
            ThingPlan(Identity(c.id, i, Path(c.key), Path(c.cert)), config.topic(c.id), schedule)
            for i, (c, schedule) in enumerate(zip(config.clients, schedules, strict=True))
        ],
        spec,
        qos=config.qos,
        window=config.inflight,
        publish5=MQTT5_VARIANTS.get(config.variant),
    )


class BenchKeys:
    """Fixed keys: each WebSocket connect is signed as on AWS (mosquitto checks nothing)."""

    def keys(self) -> SigningKeys:
        return SigningKeys("AKIDBENCH", "bench-secret", "bench-session-token")


def send_setup(config: PeerConfig) -> SendSetup:
    ca_pem = Path(config.ca_file).read_text()
    endpoint = Endpoint(config.host, config.port, ca_pem)
    if config.extra.get("transport") == "wss":
        auth = SigV4(region="us-east-1", keys=BenchKeys())
        endpoint = Endpoint(config.host, config.port, ca_pem, transport="wss", auth=auth)
    return SendSetup(
        endpoint=endpoint,
        connect_per_s=CONNECT_PER_S,
        connect_timeout=30.0,
        connect_retries=2,
        keepalive=60,
        drain=config.drain_seconds,
        protocol=PROTOCOL_LEVEL[MQTT_5 if config.variant in MQTT5_VARIANTS else MQTT_311],
    )


def result_document(
    totals: Totals,
    shared: Shared,
    *,
    published: int,
    qos: int,
    publish_seconds: float,
    drain_seconds: float,
    self_cpu: float,
    cpu_at_stop: float | None = None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """What an elf-async peer reports (in-process, or `send --workers` merged): `totals` at
    the end, `published` by the stop (flat out) or at the end (paced)."""
    return {
        "published": published,
        "sent": totals.published,
        "acked": totals.acked if qos else totals.published,
        "publish_seconds": publish_seconds,
        "drain_seconds": drain_seconds,
        "self_cpu": self_cpu,
        "cpu_at_stop": cpu_at_stop,
        "lag_ms": {
            key: shared.lag.percentile_ms(p)
            for key, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
        },
        "ack_ms": {
            key: shared.ack_from_send.percentile_ms(p) for key, p in (("p50", 50.0), ("p99", 99.0))
        },
        "extra": {
            **extra,
            "scheduled": totals.scheduled,
            "failed": totals.failed,
            "reconnects": totals.reconnects,
        },
    }
