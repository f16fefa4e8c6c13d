"""Peer (5, `elf_async:wN`): elf-async's `send --workers N`, i.e. `elf_async.jobs.workers`.

The real machinery, not a copy of it. The plan is the one the `elf_async` peer runs in-process
(same schedule, payload, QoS, window, drain, connect rate); `send_in_workers` starts N
``python -m elf_async.jobs._worker`` processes, deals the things out round-robin and merges their
tallies. `w1` is one worker process (not what `send --workers 1` runs, which is in-process: the
`elf_async` peer), to see what the split itself costs.

The harness's handshake goes through the public `before_go` hook of `send_in_workers`, awaited
once every worker has connected and before their `Go`: it says READY with the workers' connected
counts and waits for the harness's GO. Everything else (Go at one wall-clock instant, Stop
forwarding, drain, Done, merging, killing by PID) is `elf_async.jobs.workers` unchanged.

Flat out: as the `elf_async` peer, the open loop at a rate above reach, stopped as a Ctrl-C
would (the parent forwards the stop to every worker). The count is what the kernel had taken by
the stop, as for the in-process peer; here it comes from the workers' own once-a-second
snapshots (the public `on_tick` hook: the parent merges them `TICK_SLACK_S` after the workers
took them), so the stop comes at the first tick at least `seconds` after GO and the span runs
from GO to that tick (the workers' `GO_DELAY_S`, part of what `--workers` costs, is in it). A
worker whose snapshot reached the parent late would be counted a second short: an undercount,
never an overcount.

CPU: this process's own, plus its workers'. The harness sums the whole process tree; this peer
reports its own figure as a cross-check (`self_cpu`, from `os.times()`: itself plus reaped
children, minus what the workers had used before GO, read from /proc/<worker>/stat).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from benchmarks.peers._common import emit, load_config, wait_line_async
from benchmarks.peers._elf_async import result_document, send_plan, send_setup
from elf_async.dataplane.sender import Snapshot
from elf_async.jobs.workers import WorkerView, send_in_workers
from elf_async.report.document import SendTally
from elf_async.stopping import StopSignal

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def worker_count(variant: str) -> int:
    """`w2` -> 2 (the variant of `elf_async:w2`)."""
    if not variant.startswith("w") or not variant[1:].isdigit() or int(variant[1:]) < 1:
        raise SystemExit(f"elf_async: unknown variant {variant!r} (expected wN, N >= 1)")
    return int(variant[1:])


def proc_cpu(pid: int) -> float:
    """utime+stime of a live (or not yet reaped) process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_and_reaped_cpu() -> float:
    t = os.times()
    return float(t.user + t.system + t.children_user + t.children_system)


class Refused(Exception):
    """The harness said EXIT instead of GO."""


async def run() -> None:
    config = load_config()
    count = worker_count(config.variant)
    flat_out = not config.paced
    plan = send_plan(config)
    setup = send_setup(config)
    stop = StopSignal()  # no signal handlers: see SIGTERM below
    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}
    at_stop: dict[str, int] = {}
    pids: list[int] = []

    def on_tick(snapshot: Snapshot) -> None:
        """The workers' merged totals as of second `elapsed` of the run: flat out, the first
        one at least `seconds` after GO is the stop."""
        taken_at = marks["origin"] + snapshot.elapsed
        if not flat_out or "go" not in marks or "stop" in marks:
            return
        if taken_at >= marks["go"] + config.seconds:
            marks["stop"] = taken_at
            at_stop["published"] = snapshot.totals.published
            stop.event.set()

    async def before_go(workers: Sequence[WorkerView]) -> None:
        connected = sum(w.connected for w in workers)
        failed = sum(w.things for w in workers) - connected
        emit("READY", {"connected": connected, "failed": failed, "workers": len(workers)})
        if await wait_line_async() != "GO":
            raise Refused
        marks["go"] = time.monotonic()
        # The workers are idle, waiting for Go: what they used so far (connecting) is not ours.
        pids.extend(w.pid for w in workers)
        marks["cpu0"] = own_and_reaped_cpu() + sum(proc_cpu(pid) for pid in pids)

    async def send() -> SendTally:
        marks["origin"] = time.monotonic()  # send_in_workers' time origin, in this clock
        return await send_in_workers(
            plan, setup, count, stop, on_tick=on_tick, verbose=False, before_go=before_go
        )

    sending = asyncio.ensure_future(send())
    # The harness stops us by PID with SIGTERM: cancel, so that send_in_workers' `finally`
    # kills and reaps every worker by PID, then leave at once.
    loop.add_signal_handler(signal.SIGTERM, sending.cancel)
    try:
        tally = await sending
    except Refused:
        return
    except asyncio.CancelledError:
        os._exit(128 + signal.SIGTERM)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    done = time.monotonic()
    cpu = own_and_reaped_cpu() - marks["cpu0"]  # every worker has exited and been reaped
    start = marks["go"]
    publish_seconds = marks.get("stop", done) - start if flat_out else tally.publish_window_s
    final = tally.totals()
    out = result_document(
        final,
        tally.shared,
        published=at_stop.get("published", final["published"]),
        qos=config.qos,
        publish_seconds=publish_seconds,
        drain_seconds=max(0.0, done - start - publish_seconds),
        self_cpu=cpu,
        extra={
            "workers": tally.workers,
            "workers_lost": tally.lost,
            "workers_window_s": round(tally.publish_window_s, 3),
            "worker_pids": pids,
            "rate_per_thing": config.rate,
        },
    )
    emit("RESULT", out)
    await wait_line_async()


if __name__ == "__main__":
    uvloop.run(run())
