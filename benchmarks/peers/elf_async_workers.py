"""Peer (5, `elf_async:wN`): elf-async's `send --workers N`, i.e. `elf_async.jobs.workers`.

The real machinery, not a copy of it. The plan is built here as the `elf_async` peer builds its
publishers (same schedule, payload, QoS, window, drain, connect rate); `send_in_workers` starts
N ``python -m elf_async.jobs._worker`` processes, deals the things out round-robin and merges their
tallies. `w1` is one worker process (not what `send --workers 1` runs, which is in-process: the
`elf_async` peer), to see what the split itself costs.

One seam is added, for the harness's handshake: every benchmark peer connects before GO, so the
workers' `Go` is held back until the harness has had READY and said GO. A `_Worker` subclass
does it: its `ready` event, when `send_in_workers` awaits it, also waits for the harness (the one
place between "every worker connected" and the `Go` message the parent sends). Everything else
(Go at one wall-clock instant, Stop forwarding, drain, Done, merging, killing by PID) is
`elf_async.jobs.workers` unchanged.

Flat out: as the `elf_async` peer, every thing scheduled at `flat_out_rate` (AWS's 100/s) and
stopped `seconds` after GO as a Ctrl-C would (the parent forwards the stop to every worker).
The publish span is counted from GO to the stop, as for the in-process peer (so the workers'
0.1 s GO delay, part of what `--workers` costs, is in it).

CPU: this process's own, plus its workers'. The harness sums the whole process tree; this peer
reports its own figure as a cross-check (`self_cpu`, from `os.times()`: itself plus reaped
children, minus what the workers had used before GO, read from /proc/<worker>/stat).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchmarks.peers._common import PeerConfig, emit, wait_line_async
from benchmarks.peers.elf_async_send import result_document
from elf_async.dataplane.connections import Endpoint, Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, SendSetup, ThingPlan
from elf_async.dataplane.schedule import plan
from elf_async.jobs import workers
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


class Gate:
    """Holds `send_in_workers` between "every worker connected" and its `Go` message until
    the harness has been told READY and has answered GO."""

    def __init__(self) -> None:
        self.workers: list[_GatedWorker] = []
        self.opened_at = 0.0  # monotonic instant of the harness's GO
        self.cpu_at_go = 0.0
        self.on_go: Callable[[], object] = lambda: None
        self._task: asyncio.Task[None] | None = None

    async def wait(self) -> None:
        # Only `send_in_workers` calls this, after every `_Worker.start` has returned: so
        # `self.workers` is complete here.
        if self._task is None:
            self._task = asyncio.ensure_future(self._open())
        await asyncio.shield(self._task)

    async def _open(self) -> None:
        await asyncio.gather(*(asyncio.Event.wait(w.ready) for w in self.workers))
        # The workers tick once a second, also while they wait for Go: one more tick after
        # their Ready carries their final connected count.
        await asyncio.sleep(1.0 + workers.TICK_SLACK_S)
        snapshots = [w.snapshot for w in self.workers if w.snapshot is not None]
        connected = sum(s.connected for s in snapshots)
        failed = sum(len(w.plan.things) for w in self.workers) - connected
        emit("READY", {"connected": connected, "failed": failed, "workers": len(self.workers)})
        if await wait_line_async() != "GO":
            raise Refused
        self.opened_at = time.monotonic()
        self.on_go()
        # The workers are idle, waiting for Go: what they used so far (connecting) is not ours.
        self.cpu_at_go = own_and_reaped_cpu() + sum(proc_cpu(w.process.pid) for w in self.workers)


GATE = Gate()


class _GatedReady(asyncio.Event):
    async def wait(self) -> Literal[True]:
        await super().wait()
        await GATE.wait()
        return True


@dataclass
class _GatedWorker(workers._Worker):
    ready: asyncio.Event = field(default_factory=_GatedReady)

    @classmethod
    async def start(cls, number: int, job: workers.Job) -> _GatedWorker:
        worker = await super().start(number, job)
        assert isinstance(worker, _GatedWorker)
        GATE.workers.append(worker)
        return worker


async def run_workers(config: PeerConfig) -> None:
    count = worker_count(config.variant)
    flat_out = config.rate is None
    rate = float(config.extra.get("flat_out_rate", 100.0)) if flat_out else float(config.rate or 1)
    # The same plan and settings as the in-process `elf_async` peer, as `send` would build it.
    spec = build_spec(
        message=None, json_message=None, template=None, size=config.payload_size, stamp=None
    )
    schedules = plan(len(config.clients), rate, duration=config.seconds)
    send_plan = SendPlan(
        [
            ThingPlan(Identity(c.id, i, Path(c.key), Path(c.cert)), config.topic(c.id), schedule)
            for i, (c, schedule) in enumerate(zip(config.clients, schedules, strict=True))
        ],
        spec,
        qos=config.qos,
        window=config.inflight,
    )
    setup = SendSetup(
        endpoint=Endpoint(config.host, config.port, Path(config.ca_file).read_text()),  # noqa: ASYNC240 - before GO
        connect_per_s=1000.0,  # split among the workers by send_in_workers
        connect_timeout=30.0,
        connect_retries=2,
        drain=config.drain_seconds,
    )
    workers._Worker = _GatedWorker  # type: ignore[misc]  # in this peer process only
    stop = StopSignal()  # no signal handlers: see SIGTERM below
    marks: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    def halt() -> None:
        marks["stop"] = time.monotonic()
        stop.event.set()

    if flat_out:
        GATE.on_go = lambda: loop.call_later(config.seconds, halt)
    sending = asyncio.ensure_future(
        workers.send_in_workers(
            send_plan, setup, count, stop, on_tick=lambda snapshot: None, verbose=False
        )
    )
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
    cpu = own_and_reaped_cpu() - GATE.cpu_at_go  # every worker has exited and been reaped
    totals = tally.totals()
    start = GATE.opened_at
    # Flat out: from GO to the stop, exactly as the in-process peer counts it (not the workers'
    # own window: it runs on to the last byte the kernel took, which after a QoS 0 flood is
    # long after the stop; the in-process peer counts that as drain too).
    publish_seconds = marks.get("stop", done) - start if flat_out else tally.publish_window_s
    out = result_document(
        totals,
        tally.shared,
        qos=config.qos,
        publish_seconds=publish_seconds,
        drain_seconds=max(0.0, done - start - publish_seconds),
        self_cpu=cpu,
        extra={
            "workers": tally.workers,
            "workers_lost": tally.lost,
            "workers_window_s": round(tally.publish_window_s, 3),
            "worker_pids": [w.process.pid for w in GATE.workers],
            "rate_per_thing": rate,
        },
    )
    emit("RESULT", out)
    await wait_line_async()
