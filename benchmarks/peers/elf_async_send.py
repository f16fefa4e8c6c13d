"""Peer (5): elf-async's own send path in-process: what `elf-async send` (`--workers 1`) runs.

The plan, setup and `Sender` are those `send` builds (`elf_async.dataplane.plan.sender_for`:
Connector, Publishers with the default stamped payload, open-loop schedule, drain), minus the
ledger and the CLI. The harness's handshake goes through the Sender's public `go` hook, awaited
after the connect phase: it says READY with the connected count, waits for the harness's GO
and returns that instant as the schedule's start, so only the publish phase is charged.
Flat out is the same open loop at a rate above what the process can do, stopped after
`seconds` as a Ctrl-C would; what the kernel had taken by then is the count (snapshot in the
stop callback: the Wire's last batches leave during the drain and are reported as `sent`).
Paced is the real schedule for `seconds`, then the drain.

`send --workers N` is the other elf-async peer, `elf_async_workers` (`elf_async:wN`).
"""

from __future__ import annotations

import asyncio
import time

import uvloop

from benchmarks.peers._common import emit, load_config, self_cpu, wait_line_async
from benchmarks.peers._elf_async import result_document, send_plan, send_setup
from elf_async.dataplane.plan import sender_for
from elf_async.dataplane.sender import Shared
from elf_async.dataplane.tally import Totals
from elf_async.stopping import StopSignal


async def run() -> None:
    config = load_config()
    flat_out = not config.paced
    plan = send_plan(config)
    setup = send_setup(config)
    shared = Shared()
    stop = StopSignal()  # no signal handlers: the harness stops us by PID
    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    at_stop: list[Totals] = []

    def halt() -> None:
        marks["stop"] = time.monotonic()
        marks["cpu_stop"] = self_cpu()
        at_stop.append(Totals.of(sender.publishers))
        stop.event.set()

    async def go() -> float:
        """After the connect phase: READY, then the harness's GO is the schedule's start."""
        connected = sender.connected
        emit("READY", {"connected": connected, "failed": len(plan.things) - connected})
        if await wait_line_async() != "GO":
            stop.event.set()  # the Sender then publishes nothing and disconnects
            return time.monotonic()
        marks["cpu0"] = self_cpu()
        marks["go"] = time.monotonic()
        if flat_out:
            loop.call_later(config.seconds, halt)
        return marks["go"]

    sender = sender_for(plan, setup, go=go, shared=shared)
    result = await sender.run(stop)
    if "go" not in marks:
        return
    done = time.monotonic()
    start = marks["go"]
    # The stop timer fires late if the scheduler starves the loop: then the real span counts.
    publish_seconds = (marks.get("stop", done) - start) if flat_out else result.publish_window_s
    final = result.totals()
    out = result_document(
        final,
        shared,
        published=(at_stop[0] if at_stop else final).published,
        qos=config.qos,
        publish_seconds=publish_seconds,
        drain_seconds=done - start - publish_seconds,
        self_cpu=self_cpu() - marks["cpu0"],
        cpu_at_stop=marks["cpu_stop"] - marks["cpu0"] if "cpu_stop" in marks else None,
        extra={"rate_per_thing": config.rate},
    )
    emit("RESULT", out)
    await wait_line_async()


if __name__ == "__main__":
    uvloop.run(run())
