"""Peer (5): elf-async's own send path, driven in-process through `elf_async.sender.Sender`.

The same objects `elf-async send` builds (Connector, Publisher with the default stamped payload,
open-loop schedule, Sender with drain), minus the ledger and the CLI. Connecting happens before
GO (as for every peer), so the harness charges only the publish phase. "Flat out" means a rate
above what the process can do (`flat_out_rate` per thing, default AWS's 100/s), stopped after
`seconds` as a Ctrl-C would; "paced" is the real schedule for `seconds`, then the drain.

Variant `wN` (peer `elf_async:w2`): `send --workers N` instead, see `elf_async_workers`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.peers._common import emit, load_config, self_cpu, wait_line_async
from elf_async.dataplane.connections import Connector, Endpoint, Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.schedule import plan
from elf_async.dataplane.sender import Publisher, Sender, Shared
from elf_async.dataplane.tally import Totals
from elf_async.stopping import StopSignal


class PreConnectedSender(Sender):
    """`Sender` whose connect phase already ran (before GO): run() starts at the schedule."""

    async def _connect_all(self, stop: StopSignal) -> None:
        return None


def result_document(
    totals: Totals,
    shared: Shared,
    *,
    qos: int,
    publish_seconds: float,
    drain_seconds: float,
    self_cpu: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """What an elf-async peer reports (in-process, or `send --workers` merged)."""
    return {
        "published": totals.published,
        "acked": totals.acked if qos else totals.published,
        "publish_seconds": publish_seconds,
        "drain_seconds": drain_seconds,
        "self_cpu": self_cpu,
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


async def run() -> None:
    config = load_config()
    if config.variant:
        from benchmarks.peers.elf_async_workers import run_workers

        await run_workers(config)
        return
    flat_out = config.rate is None
    # Flat out = every thing at AWS's per-connection limit (100/s): far above what the paho
    # hot path can publish, so it runs behind schedule and catches up as fast as it can.
    rate = float(config.extra.get("flat_out_rate", 100.0)) if flat_out else float(config.rate or 1)
    duration = config.seconds
    endpoint = Endpoint(config.host, config.port, Path(config.ca_file).read_text())  # noqa: ASYNC240 - before GO
    connector = Connector(endpoint, rate=1000.0, timeout=30.0, retries=2, max_inflight=100)
    spec = build_spec(
        message=None, json_message=None, template=None, size=config.payload_size, stamp=None
    )
    shared = Shared()
    schedules = plan(len(config.clients), rate, duration=duration)
    publishers = [
        Publisher(
            Identity(c.id, i, Path(c.key), Path(c.cert)),
            config.topic(c.id),
            schedule,
            spec.encoder(c.id),
            qos=config.qos,
            window=config.inflight,
            shared=shared,
        )
        for i, (c, schedule) in enumerate(zip(config.clients, schedules, strict=True))
    ]
    stop = StopSignal()  # no signal handlers: the harness stops us by PID
    sender = PreConnectedSender(publishers, connector, shared, drain=config.drain_seconds)
    await Sender._connect_all(sender, stop)
    connected = sum(1 for p in publishers if p.link is not None)
    emit("READY", {"connected": connected, "failed": len(publishers) - connected})
    if await wait_line_async() != "GO":
        return
    cpu0 = self_cpu()
    start = time.monotonic()
    marks: dict[str, float] = {}
    if flat_out:

        def halt() -> None:
            marks["stop"] = time.monotonic()
            stop.event.set()

        asyncio.get_running_loop().call_later(config.seconds, halt)
    result = await sender.run(stop)
    done = time.monotonic()
    totals = result.totals()
    # The stop timer fires late if the scheduler starves the loop: then the real span counts.
    publish_seconds = (marks.get("stop", done) - start) if flat_out else result.publish_window_s
    out = result_document(
        totals,
        shared,
        qos=config.qos,
        publish_seconds=publish_seconds,
        drain_seconds=done - start - publish_seconds,
        self_cpu=self_cpu() - cpu0,
        extra={"rate_per_thing": rate},
    )
    emit("RESULT", out)
    await wait_line_async()


if __name__ == "__main__":
    uvloop.run(run())
