"""`send --workers N`: N processes, each with its own uvloop loop and a share of the things,
sending one schedule, shown in one live view and reported in one report.

The parent plans once (every option checked, phases spread over the whole fleet) and starts N
``python -m elf_async.jobs._worker`` processes, each in a session of its own so that a terminal's
Ctrl-C reaches only the parent, which forwards each stop once. A worker gets the things
round-robin (its load spread over the interval like the fleet's) and 1/N of --connect-rate;
it connects, says READY (with how many of its things connected) and waits for GO, whose
wall-clock instant it turns into its own monotonic base: the open loop is one schedule across
processes. Between the last READY and GO the parent awaits an optional `before_go` hook, which
sees each worker as a `WorkerView` (a benchmark holds GO there until its own start signal).
A worker streams a snapshot a second and its tally at the end; the parent sums the counts,
merges the HDR histograms and the per-second series (one time origin for all) and concatenates
the per-thing rows.
A worker exits when its stdin closes (the parent is gone); the parent kills by PID whatever
is still running when it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import uvloop

from elf_async.dataplane.mqtt import debug_paho
from elf_async.dataplane.plan import SendPlan, SendSetup, sender_for
from elf_async.dataplane.sender import Phase, Snapshot, schedule_span
from elf_async.dataplane.tally import Totals
from elf_async.errors import EXIT_RUNTIME
from elf_async.metrics import PLAN_GAUGES, merged
from elf_async.report.document import SendTally, ThingTally
from elf_async.shards import series_origin
from elf_async.stopping import StopSignal

GO_DELAY_S = 0.1  # from GO to the first due message: time for every worker to hear GO
TICK_SLACK_S = 0.25  # the parent's live view ticks this long after the workers' ticks
URGENT_GRACE_S = 10.0  # after a second signal: time for the workers to disconnect and report
_HEADER = struct.Struct("!I")
_PHASES = list(Phase)  # in order: the view shows the earliest any worker is in


# Messages, pickled in length-prefixed frames. Parent -> worker: a Job, then Go and Stop.
@dataclass(frozen=True)
class Job:
    plan: SendPlan  # this worker's things
    setup: SendSetup  # with this worker's share of the connect rate
    origin: float  # epoch seconds: t = 0 of the series, shared by every worker
    verbose: bool


@dataclass(frozen=True)
class Go:
    start: float  # epoch seconds at which the schedule starts


@dataclass(frozen=True)
class Stop:
    signum: int  # the signal the parent received


# Worker -> parent: Ready, a Tick a second, Done.
@dataclass(frozen=True)
class Ready:
    connected: int  # the worker's things connected (the others owe their schedule)


@dataclass(frozen=True)
class Tick:
    snapshot: Snapshot  # with the worker's whole histograms: the parent merges them


@dataclass(frozen=True)
class Done:
    tally: SendTally


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> object:
    """The next message; `asyncio.IncompleteReadError` at the end of the stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def monotonic_at(epoch: float) -> float:
    """This process's monotonic time at wall-clock instant `epoch`."""
    return time.monotonic() - (time.time() - epoch)


@dataclass
class StartAt:
    """A schedule that starts at a wall-clock instant (--start-at), the same for every shard
    and every worker: its series starts whole seconds before it (`series_origin`), and how
    late this process was connected and ready for it is measured (open loop: a late one owes
    what fell due meanwhile, sent late with its lag measured)."""

    at: float  # epoch seconds
    origin: float = field(init=False)  # epoch seconds: t = 0 of the per-second series
    late_s: float = 0.0
    # An engine's broadcast (the cluster driver's): the instant, told once connected.
    told: Callable[[StopSignal], Awaitable[float]] | None = None

    def __post_init__(self) -> None:
        self.origin = series_origin(self.at, time.time())

    @classmethod
    def broadcast(cls, told: Callable[[StopSignal], Awaitable[float]]) -> StartAt:
        """An instant told once connected, in whole epoch seconds: the series starts at this
        whole second, so it covers the same seconds as every other shard's."""
        return cls(math.floor(time.time()), told=told)

    def ready(self) -> float:
        """Connected now: the lateness recorded; the instant, in this process's monotonic time."""
        self.late_s = max(0.0, time.time() - self.at)
        return monotonic_at(self.at)

    async def wait(self, stop: StopSignal) -> float:
        """Connected: wait for the instant (or a stop); `Sender`'s `go`."""
        if self.told is not None:
            self.at = await self.told(stop)
        start = self.ready()
        await stop.sleep(max(0.0, start - time.monotonic()))
        return start


# The parent.


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as a `before_go` hook sees it: connected, waiting for GO."""

    number: int  # 0-based
    pid: int
    things: int  # its share of the plan
    connected: int  # of those, connected (0 for a worker that died before READY)


@dataclass
class _Worker:
    """One worker process as the parent sees it."""

    number: int
    plan: SendPlan
    process: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    connected: int = 0
    snapshot: Snapshot | None = None
    tally: SendTally | None = None

    @classmethod
    async def start(cls, number: int, job: Job) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "elf_async.jobs._worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        worker = cls(number, job.plan, process)
        worker.send(job)
        return worker

    def send(self, message: object) -> None:
        stdin = self.process.stdin
        if stdin is not None and self.process.returncode is None and not stdin.is_closing():
            stdin.write(_frame(message))

    async def listen(self) -> None:
        """Take the worker's messages until it closes its end."""
        assert self.process.stdout is not None
        try:
            while True:
                message = await _read(self.process.stdout)
                if isinstance(message, Ready):
                    self.connected = message.connected
                    self.ready.set()
                elif isinstance(message, Tick):
                    self.snapshot = message.snapshot
                elif isinstance(message, Done):
                    self.tally = message.tally
        except asyncio.IncompleteReadError:
            pass
        finally:
            self.ready.set()  # a worker that died is not waited for
        await self.process.wait()

    def view(self) -> WorkerView:
        return WorkerView(self.number, self.process.pid, len(self.plan.things), self.connected)

    def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def lost(self, workers: int) -> str:
        return (
            f"worker {self.number + 1} of {workers} exited with code {self.process.returncode} "
            f"before its report: its {len(self.plan.things)} things are not counted"
        )

    def missing_rows(self, why: str) -> list[ThingTally]:
        return [
            ThingTally(
                name=t.identity.name,
                index=t.identity.index,
                topic=t.topic,
                rate=t.schedule.rate,
                scheduled=0,
                published=0,
                acked=0,
                failed=0,
                retransmitted=0,
                reconnects=0,
                error=why,
            )
            for t in self.plan.things
        ]


async def send_in_workers(
    plan: SendPlan,
    setup: SendSetup,
    workers: int,
    stop: StopSignal,
    *,
    on_tick: Callable[[Snapshot], None],
    verbose: bool,
    before_go: Callable[[Sequence[WorkerView]], Awaitable[None]] | None = None,
    start: StartAt | None = None,
) -> SendTally:
    """The plan sent by `workers` processes (no more than there are things), merged.

    `before_go` is awaited once every worker is connected and waiting (or dead), right before
    GO: the schedule starts `GO_DELAY_S` after it returns, or at `start`'s instant. What it
    raises ends the send (the workers are killed)."""
    count = min(workers, len(plan.things))
    origin = time.time() if start is None else start.origin
    share = dataclasses.replace(setup, connect_per_s=setup.connect_per_s / count)
    started: list[_Worker] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for number in range(count):
            part = dataclasses.replace(plan, things=plan.things[number::count])
            started.append(await _Worker.start(number, Job(part, share, origin, verbose)))
        listeners = [asyncio.create_task(w.listen()) for w in started]
        tasks += listeners
        tasks.append(asyncio.create_task(_forward_stops(stop, started)))
        tasks.append(asyncio.create_task(_show(started, monotonic_at(origin), plan, on_tick)))
        await asyncio.gather(*(w.ready.wait() for w in started))
        if before_go is not None:
            await before_go([w.view() for w in started])
        if start is None:
            go = Go(time.time() + GO_DELAY_S)
        else:
            start.ready()
            go = Go(start.at)
        for worker in started:
            worker.send(go)
        await asyncio.gather(*listeners)
    finally:
        for task in tasks:
            task.cancel()
        for worker in started:
            worker.kill()
            await worker.process.wait()
            if worker.process.stdin is not None:
                worker.process.stdin.close()
    lost = [(w, w.lost(count)) for w in started if w.tally is None]
    return SendTally.merge(
        [w.tally for w in started if w.tally is not None],
        missing=[row for w, why in lost for row in w.missing_rows(why)],
        outcome=stop.outcome,
        started_at=origin,
        ended_at=time.time(),
        target_per_s=plan.target_per_s,
        lost=[why for _, why in lost],
    )


async def _forward_stops(stop: StopSignal, workers: list[_Worker]) -> None:
    """The first signal asks every worker to stop (and drain), a second one to hurry; a
    worker that has not finished URGENT_GRACE_S later is killed (and reported lost)."""
    for event in (stop.event, stop.urgent):
        await event.wait()
        message = Stop(stop.signal or signal.SIGINT)
        for worker in workers:
            worker.send(message)
    await asyncio.sleep(URGENT_GRACE_S)
    for worker in workers:
        worker.kill()


async def _show(
    workers: list[_Worker], clock: float, plan: SendPlan, on_tick: Callable[[Snapshot], None]
) -> None:
    """Once a second, just after the workers' own ticks: their latest snapshots as one."""
    second = 1
    while True:
        await asyncio.sleep(max(0.0, clock + second + TICK_SLACK_S - time.monotonic()))
        snapshots = [w.snapshot for w in workers if w.snapshot is not None]
        on_tick(merge_snapshots(snapshots, elapsed=second, plan=plan))
        second += 1


def merge_snapshots(
    snapshots: Sequence[Snapshot], *, elapsed: float, plan: SendPlan | None = None
) -> Snapshot:
    """Several processes' latest snapshots as one live view's: counts summed, histograms
    merged, the earliest phase. The whole `plan` gives the things and the schedule when the
    caller has it (--workers); else they are summed from the snapshots (a cluster's shards)."""
    ack = merged(s.ack for s in snapshots)
    if plan is not None:
        things = len(plan.things)
        target_per_s = plan.target_per_s
        planned = sum(t.schedule.total for t in plan.things)
        span_s = schedule_span(t.schedule for t in plan.things)
    else:
        things = sum(s.things for s in snapshots)
        target_per_s = sum(s.target_per_s for s in snapshots)
        planned = sum(s.planned for s in snapshots)
        span_s = max((s.span_s for s in snapshots), default=0.0)
    return Snapshot(
        phase=min((s.phase for s in snapshots), key=_PHASES.index, default=_PHASES[0]),
        elapsed=elapsed,
        things=things,
        connected=sum(s.connected for s in snapshots),
        connect_failed=sum(s.connect_failed for s in snapshots),
        totals=Totals.of(s.totals for s in snapshots),
        last_second=_summed(s.last_second for s in snapshots),
        target_per_s=target_per_s,
        ack_p50_ms=ack.percentile_ms(50),
        ack_p99_ms=ack.percentile_ms(99),
        planned=planned,
        span_s=span_s,
        sending_s=max((s.sending_s for s in snapshots if s.sending_s is not None), default=None),
        ack=ack,
        lag=merged(s.lag for s in snapshots),
        connect=merged(s.connect for s in snapshots),
    )


def _summed(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of several workers added up (a row's time stamp and its per-second histograms,
    which the report merges at the end, are not counts)."""
    total: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if name in PLAN_GAUGES:  # the same in every worker: kept, not summed
                total[name] = value if total.get(name) is None else total[name]
            elif name != "t" and isinstance(value, int):
                total[name] = total.get(name, 0) + value
    return total


# The worker.


class ForwardedStop(StopSignal):
    """A StopSignal fired by the parent's Stop messages instead of signal handlers."""

    def forward(self, signum: int) -> None:
        self._received(signal.Signals(signum))


def worker_main() -> None:
    """Entry of ``python -m elf_async.jobs._worker``: messages on stdin/stdout, logs on stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stops come from the parent, as messages
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt a frame
    uvloop.run(_work(channel))


async def _work(channel: IO[bytes]) -> None:
    def send(message: object) -> None:
        channel.write(_frame(message))
        channel.flush()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = await _read(reader)
    assert isinstance(job, Job)
    if job.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        debug_paho(True)
    stop = ForwardedStop()
    go: asyncio.Future[float] = loop.create_future()
    listener = asyncio.create_task(_listen(reader, stop, go))

    async def ready() -> float:
        """Connected: tell the parent, then wait for GO (or a stop)."""
        send(Ready(sender.connected))
        stopped = asyncio.create_task(stop.event.wait())
        waiting: list[asyncio.Future[Any]] = [go, stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        return monotonic_at(go.result()) if go.done() else time.monotonic()

    sender = sender_for(
        job.plan,
        job.setup,
        on_tick=lambda snapshot: send(Tick(snapshot)),
        clock=monotonic_at(job.origin),
        go=ready,
    )
    result = await sender.run(stop)
    send(Done(SendTally.of(result)))
    listener.cancel()


async def _listen(
    reader: asyncio.StreamReader, stop: ForwardedStop, go: asyncio.Future[float]
) -> None:
    """The parent's messages; the end of stdin means the parent is gone: exit at once."""
    while True:
        try:
            message = await _read(reader)
        except asyncio.IncompleteReadError:
            os._exit(EXIT_RUNTIME)
        if isinstance(message, Go) and not go.done():
            go.set_result(message.start)
        elif isinstance(message, Stop):
            stop.forward(message.signum)
