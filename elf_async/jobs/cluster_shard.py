"""One shard of `run --cluster`, as a Dask task on its worker (elf_async.jobs.cluster submits
it): create the shard's slice, connect, say READY, send from the driver's start instant, clean
the slice (always, as `run` does), and return the shard's report.

It runs in the worker's task thread with an event loop of its own and no signal handlers:
the driver's stop comes through a Dask Variable (`Control`) that a poller turns into a
`ForwardedStop`. Messages to the driver (READY, a snapshot a second) go through a Dask Queue
from one thread of their own, so the event loop never waits for the scheduler. The shard's
keys and certificates stay in its state dir on this machine: the result holds the report
(counts, histograms, per-thing rows), never a key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.util
import pickle
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

import elf_async
from elf_async.controlplane.create import CreateRequest
from elf_async.dataplane.sender import Snapshot
from elf_async.jobs import run as runner
from elf_async.jobs.send import SendOptions, run_send
from elf_async.jobs.target import Aim
from elf_async.jobs.workers import ForwardedStop, StartAt
from elf_async.progress import NoProgress
from elf_async.report.model import SendReport
from elf_async.stopping import StopSignal

CONTROL_POLL_S = 0.2  # how often a shard reads the driver's control Variable
# What a worker must import to run a shard (the probe names the missing ones).
DEPENDENCIES = ("aioboto3", "aiomqtt", "paho", "uvloop", "hdrh", "cryptography", "distributed")


@dataclass(frozen=True, slots=True)
class Names:
    """The Dask Queue and Variable one cluster run uses, unique to the run."""

    events: str  # shard -> driver: ("ready", i), ("tick", i, pickled Snapshot)
    control: str  # driver -> shards: {"start_at": epoch | None, "stop": 0, 1 or 2, "signum"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardJob:
    """What the driver sends a shard: no key, no certificate (each shard makes its own)."""

    index: int
    aimed: Aim  # the driver's (with --local: its local stack; on one machine paths are valid)
    request: CreateRequest  # this shard's slice, with the fleet id and its share of API rates
    options: SendOptions  # with this shard and its share of the connect rate
    names: Names
    state_root: str | None  # else the worker's local directory
    clean_concurrency: int


def probe() -> dict[str, Any]:
    """What a worker runs before anything is created: its elf-async version and the
    dependencies it cannot import."""
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    return {"version": elf_async.__version__, "missing": missing}


def run_shard(job: ShardJob) -> dict[str, Any]:
    """The Dask task: the shard's run, its result as JSON-able values (no keys)."""
    from distributed import Queue, Variable, get_client, get_worker

    client = get_client()
    # distributed's Queue and Variable are not annotated.
    events = Queue(job.names.events, client=client)  # type: ignore[no-untyped-call]
    control = Variable(job.names.control, client=client)  # type: ignore[no-untyped-call]
    root = Path(job.state_root) if job.state_root else Path(get_worker().local_directory)
    fleet_id = job.request.fleet_id or "fleet"
    state_dir = root / f"elf-{fleet_id}-shard-{job.index}"
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = dataclasses.replace(job.aimed.settings, state_dir=state_dir, quiet=True)
    aimed = dataclasses.replace(job.aimed, settings=settings)
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="elf-shard") as pool:
        channel = _Channel(job.index, events.put, control.get, pool)
        return uvloop.run(_shard(job, aimed, channel))


@dataclass
class _Channel:
    """The shard's side of the Queue and the Variable, off the event loop."""

    index: int
    put: Any  # Queue.put
    get: Any  # Variable.get
    pool: concurrent.futures.ThreadPoolExecutor

    def send(self, *message: Any) -> None:
        """Fire and forget: one thread puts them in order (ticks are by second anyway)."""
        self.pool.submit(self.put, (message[0], self.index, *message[1:]))

    async def control(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        value: dict[str, Any] = await loop.run_in_executor(self.pool, self.get)
        return value


async def _shard(job: ShardJob, aimed: Aim, channel: _Channel) -> dict[str, Any]:
    stop = ForwardedStop()
    instant: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    poller = asyncio.create_task(_poll(channel, stop, instant))

    async def told(stopped: StopSignal) -> float:
        """Connected: READY to the driver, then its start instant (or now, when stopped)."""
        channel.send("ready")
        stopping = asyncio.create_task(stopped.event.wait())
        waiting: list[asyncio.Future[Any]] = [instant, stopping]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return instant.result() if instant.done() else time.time()

    async def send(target: Aim, stopped: StopSignal) -> SendReport:
        return await run_send(
            target,
            job.options,
            stopped,
            on_tick=lambda snapshot: channel.send("tick", pickle.dumps(snapshot)),
            start=StartAt.broadcast(told),
        )

    try:
        result = await runner.run(
            aimed,
            job.request,
            send,
            [],
            progress=lambda label: NoProgress(),
            notify=lambda line: None,
            clean_concurrency=job.clean_concurrency,
            stop=stop,
        )
    finally:
        poller.cancel()
    return {
        "index": job.index,
        "report": result.report,
        "failure": result.failure,
        "failed_phase": result.failed_phase,
        "created": result.create.summary.created if result.create else 0,
        "cleaned": bool(result.clean and result.clean.summary.forgotten),
    }


async def _poll(channel: _Channel, stop: ForwardedStop, instant: asyncio.Future[float]) -> None:
    """The driver's control Variable: its start instant, then a stop (1) or a hurry (2)."""
    stops = 0
    while True:
        control = await channel.control()
        if control.get("start_at") is not None and not instant.done():
            instant.set_result(float(control["start_at"]))
        while stops < int(control.get("stop", 0)):
            stops += 1
            stop.forward(int(control.get("signum") or signal.SIGINT))
        await asyncio.sleep(CONTROL_POLL_S)


def snapshot_of(data: bytes) -> Snapshot:
    """A shard's pickled tick, as the driver reads it."""
    snapshot = pickle.loads(data)
    assert isinstance(snapshot, Snapshot)
    return snapshot
