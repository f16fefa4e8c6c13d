"""`run --cluster`: a sharded run on a Dask cluster, driven from here.

Before anything is created the driver connects (a bounded wait), checks that every worker
runs this elf-async with its dependencies importable, and that there is a worker process for
each shard. Then it submits one task per shard (elf_async.jobs.cluster_shard), pinned to its
own worker, `retries=0`: a shard that ran once must not run again (its client ids would
collide with its own). Each shard creates, sends and cleans its slice on its machine, so its
keys never leave it.

The driver waits for every shard's READY (or its loss), broadcasts a start instant through a
Dask Variable, shows the shards' snapshots as one live view (`merge_snapshots`, as
`--workers` does), and merges their reports exactly (elf_async.report.merge). A shard whose
worker left the cluster (the nanny restarts a killed worker under a new address, and a task
pinned to the old one would wait forever) is marked lost and its task cancelled; the run goes
on with the others, and at the end its things are found by their fleet tag and removed. The
driver's Ctrl-C or SIGTERM goes to the shards through the same Variable: they stop
scheduling, drain and clean; a second one makes them hurry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import elf_async
from elf_async.controlplane.aws import default_api_rates
from elf_async.controlplane.clean import clean_fleet
from elf_async.controlplane.create import CreateRequest
from elf_async.controlplane.fleet import new_fleet_id
from elf_async.dataplane.sender import Snapshot
from elf_async.errors import PartialFailure, UsageError
from elf_async.jobs.cluster_shard import Names, ShardJob, probe, run_shard, snapshot_of
from elf_async.jobs.run import ProgressFactory, RunResult
from elf_async.jobs.send import SendOptions
from elf_async.jobs.target import Aim
from elf_async.jobs.workers import TICK_SLACK_S, merge_snapshots
from elf_async.report.merge import merge
from elf_async.report.model import SendReport
from elf_async.report.thresholds import Threshold, evaluate
from elf_async.report.verdict import send_problems
from elf_async.shards import Shard
from elf_async.stopping import StopSignal

CONNECT_TIMEOUT_S = 10.0  # to reach the scheduler: an unreachable one is a usage error
START_LEAD_S = 1.0  # from the last READY to the start instant: time for every shard to hear it
WATCH_S = 1.0  # how often the driver checks that the shards' workers are still there
INSTALL = "pip install 'elf-async[dask]'"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    """Where the shards run: a scheduler's address (tcp:// or tls://), or a LocalCluster of
    `local_workers` processes on 127.0.0.1 when `address` is None."""

    address: str | None
    local_workers: int = 0
    shards: int
    state_root: str | None = None  # the shards' state dirs go here; else the workers' own
    connect_timeout: float = CONNECT_TIMEOUT_S
    verbose: bool = False  # Dask's own logs on stderr


@dataclass
class _Shard:
    """One shard as the driver sees it."""

    index: int
    worker: str  # its worker's address
    future: Any  # distributed.Future
    ready: bool = False
    snapshot: Snapshot | None = None
    result: dict[str, Any] | None = None
    lost: str | None = None  # why it is lost: its worker died, or its task failed

    @property
    def finished(self) -> bool:
        return self.result is not None or self.lost is not None


@dataclass
class ClusterRun:
    """The run as `run`'s output needs it, with the fleet's life across the shards."""

    result: RunResult
    fleet_id: str
    created: int = 0
    cleaned: bool = False  # nothing of the fleet is left
    lost: list[str] = field(default_factory=list)


def distributed_module() -> ModuleType:
    """`distributed`, imported only when a cluster is asked for; missing: one line."""
    try:
        import distributed
    except ImportError:
        raise UsageError(f"--cluster needs Dask's distributed: {INSTALL}") from None
    return distributed


@contextlib.asynccontextmanager
async def connected(options: ClusterOptions) -> AsyncIterator[Any]:
    """An asynchronous Dask Client on the cluster (a LocalCluster started for the run when
    asked for); an unreachable scheduler is a usage error after `connect_timeout`."""
    distributed = distributed_module()
    if not options.verbose:  # Dask's own INFO lines, and its complaints while closing
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    async with contextlib.AsyncExitStack() as stack:
        if options.address is None:
            cluster = await stack.enter_async_context(
                distributed.LocalCluster(
                    n_workers=options.local_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # Its HTTP server (health checks) on any free loopback port, not 8787.
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.CRITICAL,
                    asynchronous=True,
                )
            )
            target: Any = cluster
        else:
            target = options.address
        try:
            client = await stack.enter_async_context(
                distributed.Client(target, asynchronous=True, timeout=options.connect_timeout)
            )
        except (OSError, TimeoutError) as exc:
            raise UsageError(
                f"--cluster {options.address}: no Dask scheduler answered within "
                f"{options.connect_timeout:g}s ({exc.__class__.__name__})"
            ) from None
        yield client


async def check_workers(client: Any, shards: int) -> list[str]:
    """The workers' addresses, sorted, once each runs this elf-async with its dependencies;
    a mismatch, or fewer workers than shards, is one line naming them."""
    try:
        answers: dict[str, dict[str, Any]] = await client.run(probe)
    except Exception as exc:  # a worker that cannot even unpickle the probe
        raise UsageError(
            f"the cluster's workers cannot run elf-async {elf_async.__version__} "
            f"({exc.__class__.__name__}: {exc}): install it on every worker"
        ) from None
    wrong = sorted(
        f"{address} ({answer['version']}"
        + (f", missing {', '.join(answer['missing'])}" if answer["missing"] else "")
        + ")"
        for address, answer in answers.items()
        if answer["version"] != elf_async.__version__ or answer["missing"]
    )
    if wrong:
        raise UsageError(
            f"workers do not run elf-async {elf_async.__version__} with its dependencies: "
            + "; ".join(wrong)
        )
    if len(answers) < shards:
        raise UsageError(
            f"--shards {shards}: the cluster has {len(answers)} worker processes, one per "
            "shard is needed"
        )
    return sorted(answers)


def shard_request(request: CreateRequest, shard: Shard, fleet_id: str) -> CreateRequest:
    """Shard `shard`'s create: its slice, the fleet's id, its share of every API's pace."""
    rates = {name: shard.share(rate) for name, rate in default_api_rates(request.api_rates).items()}
    return dataclasses.replace(request, shard=shard, fleet_id=fleet_id, api_rates=rates)


def shard_options(options: SendOptions, shard: Shard) -> SendOptions:
    """Shard `shard`'s send: its slice and its share of the account's connect rate."""
    connect = dataclasses.replace(
        options.connect, connect_per_s=shard.share(options.connect.connect_per_s)
    )
    return dataclasses.replace(options, shard=shard, connect=connect)


async def run_cluster(
    aimed: Aim,
    request: CreateRequest,
    options: SendOptions,
    cluster: ClusterOptions,
    thresholds: Sequence[Threshold],
    *,
    on_tick: Callable[[Snapshot], None],
    notify: Callable[[str], None],
    progress: ProgressFactory,
    clean_concurrency: int = 16,
) -> ClusterRun:
    """The sharded run on `cluster`: checked, submitted, watched, merged, judged."""
    distributed = distributed_module()
    started = time.monotonic()
    result = RunResult(started_at=time.time())
    fleet_id = request.fleet_id or new_fleet_id()
    outcome = ClusterRun(result, fleet_id)
    async with connected(cluster) as client:
        workers = await check_workers(client, cluster.shards)
        key = f"elf-{fleet_id}-{uuid.uuid4().hex[:8]}"
        names = Names(events=f"{key}-events", control=f"{key}-control")
        events = await distributed.Queue(names.events, client=client)
        control = distributed.Variable(names.control, client=client)
        await control.set({"start_at": None, "stop": 0, "signum": 0})
        shards = []
        for index in range(cluster.shards):
            shard = Shard(index, cluster.shards)
            job = ShardJob(
                index=index,
                aimed=aimed,
                request=shard_request(request, shard, fleet_id),
                options=shard_options(options, shard),
                names=names,
                state_root=cluster.state_root,
                clean_concurrency=clean_concurrency,
            )
            future = client.submit(
                run_shard,
                job,
                workers=[workers[index]],
                allow_other_workers=False,
                retries=0,
                pure=False,
                key=f"{key}-shard-{index}",
            )
            shards.append(_Shard(index, workers[index], future))
        changed = asyncio.Event()
        with StopSignal() as stop:
            announcer = asyncio.create_task(_announce(stop, control, notify))
            watchers = [
                asyncio.create_task(_listen(events, shards, changed)),
                asyncio.create_task(_watch(client, shards, changed)),
                asyncio.create_task(_show(shards, on_tick)),
            ]
            try:
                await _wait(lambda: all(s.ready or s.finished for s in shards), changed)
                if not stop.event.is_set():
                    start_at = math.ceil(time.time() + START_LEAD_S)
                    await control.set({"start_at": start_at, "stop": 0, "signum": 0})
                await _wait(lambda: all(s.finished for s in shards), changed)
            finally:
                for task in [*watchers, announcer]:
                    task.cancel()
                for s in shards:
                    if not s.future.done():
                        await s.future.cancel()
            result.signal = stop.signal
    outcome.lost = [s.lost for s in shards if s.lost is not None]
    _judge(outcome, shards, thresholds, stopped=result.signal is not None)
    if any(s.result is None or not s.result["cleaned"] for s in shards):
        await _clean_by_tag(aimed, outcome, progress("clean"), clean_concurrency)
    else:
        outcome.cleaned = True
    outcome.created = sum(s.result["created"] for s in shards if s.result is not None)
    result.elapsed_s = time.monotonic() - started
    return outcome


async def _wait(condition: Callable[[], bool], changed: asyncio.Event) -> None:
    """Until `condition` holds: checked whenever a shard's state `changed`."""
    while not condition():
        changed.clear()
        await changed.wait()


async def _listen(events: Any, shards: list[_Shard], changed: asyncio.Event) -> None:
    """The shards' READY and snapshots."""
    while True:
        message = await events.get()
        kind, index = message[0], message[1]
        shard = shards[index]
        if kind == "ready":
            shard.ready = True
            changed.set()
        elif kind == "tick":
            shard.snapshot = snapshot_of(message[2])


async def _watch(client: Any, shards: list[_Shard], changed: asyncio.Event) -> None:
    """Each shard's end: its result, its task's failure, or its worker gone from the cluster
    (then its task is cancelled: pinned to a dead address, it would wait forever)."""
    while not all(s.finished for s in shards):
        answers = await client.run(os.getpid, on_error="return")
        alive = {address for address, pid in answers.items() if isinstance(pid, int)}
        for s in shards:
            if s.finished:
                continue
            if s.future.status == "finished":
                s.result = await s.future
            elif s.future.status in ("error", "cancelled"):
                error = await s.future.exception() if s.future.status == "error" else None
                s.lost = f"shard {s.index} failed on worker {s.worker}: {error}"
            elif s.worker not in alive:
                s.lost = f"shard {s.index}'s worker {s.worker} left the cluster"
                await s.future.cancel()
            if s.finished:
                changed.set()
        await asyncio.sleep(WATCH_S)


async def _show(shards: list[_Shard], on_tick: Callable[[Snapshot], None]) -> None:
    """Once a second, just after the shards' own ticks: their latest snapshots as one."""
    clock = time.monotonic()
    second = 1
    while True:
        await asyncio.sleep(max(0.0, clock + second + TICK_SLACK_S - time.monotonic()))
        snapshots = [s.snapshot for s in shards if s.snapshot is not None]
        if snapshots:
            on_tick(merge_snapshots(snapshots, elapsed=max(s.elapsed for s in snapshots)))
        second += 1


async def _announce(stop: StopSignal, control: Any, notify: Callable[[str], None]) -> None:
    """The driver's signals to every shard: stop (drain, clean), then hurry."""
    for level, event in enumerate((stop.event, stop.urgent), start=1):
        await event.wait()
        current = await control.get()
        await control.set({**current, "stop": level, "signum": int(stop.signal or 0)})
        notify(
            "stopping every shard, then cleaning up (Ctrl-C again hurries them)"
            if level == 1
            else "the shards hurry: they disconnect and clean without draining"
        )


def _judge(
    outcome: ClusterRun, shards: list[_Shard], thresholds: Sequence[Threshold], *, stopped: bool
) -> None:
    """The merged report (exact, elf_async.report.merge) and the run's verdict: a shard that
    failed a phase, then the merged send's own verdict (a missing shard included)."""
    result = outcome.result
    reports = [
        (f"shard {s.index}", s.result["report"])
        for s in shards
        if s.result is not None and s.result["report"] is not None
    ]
    if reports:
        result.report = cast(SendReport, merge(reports))
    result.verdicts = evaluate(thresholds, result.report or {})
    if stopped:
        return
    failures = [
        f"shard {s.index}: {s.result['failure']}"
        for s in shards
        if s.result is not None
        and s.result["failure"] is not None
        and s.result["failed_phase"] != "send"
    ]
    problems = send_problems(result.report) if result.report is not None else []
    if result.report is None:
        problems.append("no shard sent: " + "; ".join(outcome.lost))
    problems += [line for line in outcome.lost]
    if failures or problems:
        result.error = PartialFailure("; ".join(failures + problems))
        result.failed_phase = "send" if not failures else "shard"


async def _clean_by_tag(aimed: Aim, outcome: ClusterRun, progress: Any, concurrency: int) -> None:
    """What a lost (or failed) shard left: its things found by the fleet tag from a fresh
    state dir, once every other shard has cleaned its slice."""
    with tempfile.TemporaryDirectory(prefix="elf-cluster-clean-") as directory:
        settings = dataclasses.replace(aimed.settings, state_dir=Path(directory) / "state")
        try:
            cleaned = await clean_fleet(
                settings, fleet_id=outcome.fleet_id, concurrency=concurrency, progress=progress
            )
        except Exception as exc:
            if outcome.result.error is None:
                outcome.result.error = exc
                outcome.result.failed_phase = "clean"
            return
    outcome.cleaned = cleaned is None or not cleaned.summary.failed
