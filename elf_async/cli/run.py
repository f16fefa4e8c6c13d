"""`elf-async run COUNT`: create → send → clean in one command, for CI pipelines."""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from elf_async import statelock
from elf_async.cli import _scenario, create
from elf_async.cli._args import SendArgs, takes
from elf_async.cli._common import (
    ApiRateOption,
    CaCertOption,
    CaKeyOption,
    CertModeOption,
    ConcurrencyOption,
    FleetIdOption,
    IdentityOption,
    KeyTypeOption,
    MaxThingsOption,
    RegisterCaOption,
    RunIdOption,
    SharedTopicsOption,
    TopicRootOption,
    YesOption,
    console_err,
    run,
    settings,
)
from elf_async.cli._live import LiveView, send_final_frame, send_frame
from elf_async.cli._options import (
    check_output_path,
    parse_cluster_options,
    parse_metrics_options,
)
from elf_async.cli._output import Outputs
from elf_async.cli._progress import progress_for
from elf_async.cli._summary import AWS_HINT, REPORT_HINT, Rows, print_summary, send_rows
from elf_async.config import Settings
from elf_async.controlplane.create import CreateRequest
from elf_async.controlplane.ledger import Ledger
from elf_async.errors import EXIT_USAGE, ThresholdFailed, UsageError
from elf_async.jobs import run as runner
from elf_async.jobs.cluster import ClusterOptions, ClusterRun, run_cluster
from elf_async.jobs.live_metrics import LiveMetrics, serving
from elf_async.jobs.send import SendOptions, run_send
from elf_async.jobs.target import Aim, aim
from elf_async.local import stack as localstack
from elf_async.report.document import unsent_run_report
from elf_async.report.junit import junit_xml, write_junit
from elf_async.report.model import RunReport, RunSummary, SendReport, UnsentRunReport
from elf_async.report.thresholds import Threshold, parse_all
from elf_async.report.verdict import judge_run
from elf_async.stopping import StopSignal, outcome_of


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise runner.Terminated(signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Outside the event loop, SIGTERM unwinds like Ctrl-C, so the `finally` blocks run."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the ephemeral stack stops (bounded): none is lost."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


@takes
def command(
    ctx: typer.Context,
    size: Annotated[str, typer.Argument(metavar="count", help="How many things to create.")],
    args: SendArgs,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            help="Pass/fail rule, repeatable: ack.p99<250ms, error_rate<0.1%, "
            "achieved_rate>=99%, connections.failed==0, messages.acked>=1000. "
            "A failed one exits with 3.",
            show_default=False,
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML file: the run and each threshold.")
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Use the local stack; start one for this run (and stop it after) if none runs.",
        ),
    ] = False,
    cert_mode: CertModeOption = None,
    key_type: KeyTypeOption = None,
    ca_cert: CaCertOption = None,
    ca_key: CaKeyOption = None,
    register_ca: RegisterCaOption = False,
    topic_root: TopicRootOption = None,
    shared_topics: SharedTopicsOption = False,
    identity: IdentityOption = None,
    concurrency: ConcurrencyOption = 16,
    api_rate: ApiRateOption = None,
    max_things: MaxThingsOption = 10_000,
    yes: YesOption = False,
    fleet_id: FleetIdOption = None,
    run_id: RunIdOption = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run the shards on a Dask cluster: tcp://HOST:8786, tls://HOST:8786, or "
            "local:N (N worker processes on 127.0.0.1). Needs elf-async[dask].",
            show_default=False,
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="With --cluster: how many shards, one per worker process. [default: N of local:N]",
            show_default=False,
        ),
    ] = None,
    shard_state_dir: Annotated[
        str | None,
        typer.Option(
            help="With --cluster: where each worker keeps its shard's state dir (keys "
            "included, 0700). [default: the Dask worker's local directory]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create COUNT things, send from all of them, clean up: the clean-up always runs.

    Exit codes: 0 ok, 1 runtime failure, send's own verdict included (a thing that never
    connected, a message not sent or not acknowledged, a lost --workers process), 2 bad
    input, or a report or JUnit file that could not be written at the end (kept in the state
    dir), 3 a threshold failed, 130 Ctrl-C, 143 SIGTERM; the first that applies of 130/143,
    1, 2, 3. A second Ctrl-C aborts the clean-up and prints the command that finishes it.
    With --cluster, a missing shard (its worker died) is a runtime failure (1).
    """
    opts = settings(ctx)
    thresholds = parse_all(threshold or [])
    check_output_path("--junit", junit)
    if cluster is not None and args.commands is not None:
        raise UsageError("--commands runs one controller for the whole fleet: drop --cluster")
    on_cluster = parse_cluster_options(
        cluster, shards=shards, state_root=shard_state_dir, args=args, identity=identity
    )
    if on_cluster is not None:
        on_cluster = dataclasses.replace(on_cluster, verbose=opts.verbose)
    request = create.build_request(
        size,
        prefix=None,
        cert_mode=cert_mode,
        key_type=key_type,
        ca_cert=ca_cert,
        ca_key=ca_key,
        register_ca=register_ca,
        topic_root=topic_root,
        shared_topics=shared_topics,
        identity=identity,
        concurrency=concurrency,
        api_rate=api_rate,
        max_things=max_things,
        yes=yes,
        shard=args.sharding.shard,
        fleet_id=fleet_id,
        run_id=run_id,
        controller=args.commands is not None,  # --commands: the fleet's controller too
    )
    send_options = _scenario.send_options(ctx, args, fleet_size=request.count)
    metrics_options = parse_metrics_options(args.metrics)
    live = ctx.with_resource(serving(metrics_options, command="run"))
    send_step = _send_step(send_options, quiet=opts.quiet, metrics=live)
    ctx.with_resource(statelock.hold(opts.state_dir))  # until the command returns
    if Ledger.exists(opts.state_dir):
        raise UsageError(
            f"{opts.state_dir} already holds a fleet, which run would clean at the end: "
            "use another --state-dir (or clean that fleet first)"
        )
    opts = dataclasses.replace(opts, local=opts.local or local)
    home = localstack.stack_home(opts.state_dir)  # a shard's state dir: its parent's stack
    ephemeral = False
    try:
        with _sigterm_unwinds():
            if opts.local:
                brought = localstack.up(home, region=opts.region)
                ephemeral = brought.started
                if ephemeral and not opts.quiet:
                    print(f"started a local stack for this run:\n{_describe(brought.stack)}")
            aimed = aim(opts)
            summary = None
            if on_cluster is not None:
                on = run(
                    _on_cluster(
                        aimed, request, send_options, on_cluster, thresholds,
                        quiet=opts.quiet, concurrency=concurrency,
                    )
                )  # fmt: skip
                result, summary = on.result, _cluster_summary(on)
            else:
                result = run(
                    runner.run(
                        aimed,
                        aimed.create_request(request),
                        send_step,
                        thresholds,
                        progress=lambda label: progress_for(label, quiet=opts.quiet),
                        notify=console_err,
                        clean_concurrency=concurrency,
                    )
                )
    except runner.Terminated:
        console_err("terminated")
        raise typer.Exit(runner.signal_exit_code(signal.SIGTERM)) from None
    finally:
        if ephemeral:
            with _signals_held():
                localstack.down(home)
    _finish(
        opts,
        result,
        count=size,
        report=args.report,
        html=args.html,
        junit=junit,
        ephemeral=ephemeral,
        options=send_options.as_given,
        summary=summary,
    )


async def _on_cluster(
    aimed: Aim,
    request: CreateRequest,
    options: SendOptions,
    on_cluster: ClusterOptions,
    thresholds: Sequence[Threshold],
    *,
    quiet: bool,
    concurrency: int,
) -> ClusterRun:
    """The sharded run on the cluster, its shards' snapshots shown as one live view."""
    with LiveView("send", quiet=quiet) as view:
        on = await run_cluster(
            aimed,
            aimed.create_request(request),
            options,
            on_cluster,
            thresholds,
            on_tick=lambda snapshot: view.update(send_frame(snapshot)),
            notify=console_err,
            progress=lambda label: progress_for(label, quiet=quiet),
            clean_concurrency=concurrency,
        )
        if on.result.report is not None:
            view.finish(send_final_frame(on.result.report))
    return on


def _cluster_summary(on: ClusterRun) -> RunSummary:
    """The report's `run` for a cluster run: the fleet's life across its shards."""
    result = on.result
    return {
        "exit_code": result.exit_code,
        "failure": result.failure,
        "elapsed_s": round(result.elapsed_s, 3),
        "fleet_id": on.fleet_id,
        "created": on.created,
        "cleaned": on.cleaned,
    }


def _describe(stack: localstack.LocalStack) -> str:
    return (
        f"  control plane {stack.endpoint_url}, MQTT {stack.mqtt_host}:{stack.mqtt_port}, "
        f"logs in {stack.directory}"
    )


def _finish(
    opts: Settings,
    result: runner.RunResult,
    *,
    count: str,
    report: Path | None,
    html: Path | None,
    junit: Path | None,
    ephemeral: bool,
    options: Mapping[str, object],
    summary: RunSummary | None = None,
) -> None:
    """Write the report and its HTML page (whether or not the run got to send: `options` are
    what they show then) and JUnit (kept in the state dir when they cannot be written where
    asked), print the summary, and exit with the documented code."""
    outputs = Outputs(opts.state_dir, "run")
    document = _document(result, options, summary or _run_json(result))
    written = outputs.report(document, json_path=report, html_path=html)
    if junit is not None:
        xml = junit_xml(
            name=f"run {count}",
            verdicts=result.verdicts,
            run_error=result.failure,
            duration_s=result.elapsed_s,
        )
        outputs.write("--junit", junit, lambda path: write_junit(path, xml), suffix=".xml")
    judgement = judge_run(
        result.report,
        failure=result.failure,
        thresholds=result.verdicts,
        interrupted=None if result.signal is None else _stopped(result.signal),
    )
    if judgement.passed and opts.local:
        hint: str | None = AWS_HINT
    else:
        hint = None if report else REPORT_HINT
    print_summary(judgement, _rows(result, summary), quiet=opts.quiet, report=written, hint=hint)
    for problem in outputs.problems:
        console_err(f"error: {problem}")
    if result.aborted:
        console_err(_clean_later(opts, ephemeral=ephemeral))
    if result.signal is not None:
        raise typer.Exit(result.exit_code)
    if result.error is not None:
        raise result.error
    if outputs.problems:
        raise typer.Exit(EXIT_USAGE)
    failed = [v.threshold.expr for v in result.verdicts if not v.ok]
    if failed:
        raise ThresholdFailed(
            f"{len(failed)} of {len(result.verdicts)} thresholds failed: " + ", ".join(failed)
        )


def _document(
    result: runner.RunResult, options: Mapping[str, object], summary: RunSummary
) -> RunReport | UnsentRunReport:
    thresholds = [v.to_json() for v in result.verdicts]
    if result.report is None:  # stopped (or failed) before its send phase
        return unsent_run_report(
            outcome=outcome_of(result.signal),
            started_at=result.started_at,
            ended_at=result.started_at + result.elapsed_s,
            options=dict(options),
            thresholds=thresholds,
            run=summary,
        )
    return {**result.report, "thresholds": thresholds, "run": summary}


def _stopped(signum: int) -> str:
    return "terminated" if signum == signal.SIGTERM else "interrupted"


def _rows(result: runner.RunResult, summary: RunSummary | None = None) -> Rows:
    """The fleet's life (created, removed), the send phase's figures, each threshold; a
    cluster run's `summary` says the fleet's life across its shards."""
    fleet = []
    if summary is not None:
        fleet.append(
            f"{summary['fleet_id']}: {summary['created']} things created by the shards, "
            + ("nothing left" if summary["cleaned"] else "NOT all removed")
        )
    shards = result.report.get("shards") if result.report else None
    if shards is not None:
        fleet.append(f"{shards['merged']} of {shards['count']} shards merged")
    if result.create is not None:
        s = result.create.summary
        fleet.append(
            f"{result.create.fleet_id}: {s.created} of {s.attempted} things created in "
            f"{s.elapsed_s:.1f} s" + (f" ({s.failed} failed)" if s.failed else "")
        )
    if result.clean is not None:
        c = result.clean.summary
        fleet.append(
            f"{c.removed} removed in {c.elapsed_s:.1f} s"
            + (f" ({c.failed} failed)" if c.failed else "")
            + (", nothing left" if c.forgotten else "")
        )
    rows = [("fleet", ", ".join(fleet))] if fleet else []
    if result.report is not None:
        rows += send_rows(result.report)
    rows += [("threshold", verdict.describe()) for verdict in result.verdicts]
    return rows


def _clean_later(opts: Settings, *, ephemeral: bool) -> str:
    state = shlex.quote(str(opts.state_dir))
    if ephemeral:
        return (
            "clean-up aborted; the local stack is stopped, so nothing is left in it: "
            f"`elf-async --state-dir {state} clean --only-local --yes` forgets the local files"
        )
    local = " --local" if opts.local else ""
    return f"clean-up aborted; finish it later with: elf-async --state-dir {state}{local} clean"


def _run_json(result: runner.RunResult) -> RunSummary:
    create_summary = result.create.summary if result.create else None
    return {
        "exit_code": result.exit_code,
        "failure": result.failure,
        "elapsed_s": round(result.elapsed_s, 3),
        "fleet_id": result.create.fleet_id if result.create else None,
        "created": create_summary.created if create_summary else 0,
        "cleaned": result.clean.summary.forgotten if result.clean else False,
    }


def _send_step(
    options: SendOptions, *, quiet: bool, metrics: LiveMetrics | None
) -> runner.SendStep:
    """The send phase, shown as `send` shows it; the report is written by `run` itself."""

    async def send(aimed: Aim, stop: StopSignal) -> SendReport:
        with LiveView("send", quiet=quiet) as view:
            report = await run_send(
                aimed,
                options,
                stop,
                on_tick=lambda snapshot: view.update(send_frame(snapshot)),
                warn=lambda line: console_err(f"warning: {line}"),
                metrics=metrics,
            )
            view.finish(send_final_frame(report))
        return report

    return send
