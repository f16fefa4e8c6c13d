"""`elf-async send [MESSAGE]`: publish from every thing over its own mutual-TLS connection.

Exit codes: 0 every scheduled message was published (and, at QoS 1, acknowledged) by things
that all connected; 1 some thing never connected (it owes its whole schedule) or some message
was not published or not acknowledged, or a --workers process died (the report says which;
elf_async.report.verdict decides); 2 bad input, or a report that could not be written at the end
(it is kept in the state dir; 1, 130 and 143 win over it); 130 Ctrl-C; 143 SIGTERM. The report
is written in every case but bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elf_async.cli import _mqtt
from elf_async.cli._common import console_err, run, settings
from elf_async.cli._live import Fields, LiveView, ms, print_summary
from elf_async.cli._options import ConnectArgs, SendArgs, parse_send_options
from elf_async.cli._output import Outputs
from elf_async.dataplane.mqtt import debug_paho
from elf_async.dataplane.sender import Snapshot
from elf_async.errors import EXIT_USAGE, PartialFailure
from elf_async.jobs.send import run_send
from elf_async.jobs.target import aim
from elf_async.report.document import write_report
from elf_async.report.model import SendReport
from elf_async.report.verdict import send_problems
from elf_async.stopping import StopSignal

Workers = Annotated[
    int,
    typer.Option(
        min=1,
        help="Processes sharing the things, each with its own event loop: one schedule, "
        "one live view, one report.",
    ),
]


def command(
    ctx: typer.Context,
    message: Annotated[
        str | None,
        typer.Argument(
            help='Sent as {"msg": MESSAGE}. [default: IoT ELF Hello]', show_default=False
        ),
    ] = None,
    things: _mqtt.Things = None,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Per thing: 10/s, 600/m, 0.5 (per second). [default: 1/s]", show_default=False
        ),
    ] = None,
    total_rate: Annotated[
        str | None, typer.Option(help="Spread evenly over the things instead of --rate.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option(help="60, 60s, 5m. [default: 10s]", show_default=False)
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Messages per thing, instead of --duration.")
    ] = None,
    qos: _mqtt.Qos = 1,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic template with {thing}, {index}, {fleet}. [default: <topic root>/{thing}]",
            show_default=False,
        ),
    ] = None,
    append_thing_name: Annotated[
        bool, typer.Option(help="Append /{thing} to --topic (the seed's flag).")
    ] = False,
    json_message: Annotated[
        Path | None, typer.Option(help="Send this JSON document (exactly, unless --stamp).")
    ] = None,
    payload_template: Annotated[
        str | None, typer.Option(help="Payload text with {thing}, {seq}, {ts} (epoch ms).")
    ] = None,
    payload_size: Annotated[
        int | None, typer.Option(help="Pad every payload to exactly BYTES (trailing spaces).")
    ] = None,
    stamp: Annotated[
        bool | None,
        typer.Option(
            "--stamp/--no-stamp",
            help="Add thing, seq, ts to the JSON. [default: yes, except for --json-message]",
            show_default=False,
        ),
    ] = None,
    max_inflight: Annotated[
        int, typer.Option(help="Unacknowledged QoS 1 messages per client (AWS: 100).")
    ] = 100,
    drain: Annotated[
        str, typer.Option(help="After the run or Ctrl-C: wait this long for acknowledgements.")
    ] = "5s",
    report: _mqtt.Report = None,
    workers: Workers = 1,
    mqtt_endpoint: _mqtt.MqttEndpoint = None,
    port: _mqtt.Port = None,
    ca_file: _mqtt.CaFile = None,
    connect_rate: _mqtt.ConnectRate = "100/s",
    connect_timeout: _mqtt.ConnectTimeout = "10s",
    connect_retries: _mqtt.ConnectRetries = 3,
    keepalive: _mqtt.Keepalive = "60s",
    allow_over_aws_limits: _mqtt.AllowOverLimits = False,
) -> None:
    """Publish MESSAGE from each thing at an open-loop rate; measure acks, lag and latency."""
    opts = settings(ctx)
    debug_paho(opts.verbose)
    options = parse_send_options(
        SendArgs(
            message=message,
            things=things,
            rate=rate,
            total_rate=total_rate,
            duration=duration,
            count=count,
            qos=qos,
            topic=topic,
            append_thing_name=append_thing_name,
            json_message=json_message,
            payload_template=payload_template,
            payload_size=payload_size,
            stamp=stamp,
            max_inflight=max_inflight,
            drain=drain,
            report=report,
            workers=workers,
            connect=ConnectArgs(
                mqtt_endpoint=mqtt_endpoint,
                port=port,
                ca_file=ca_file,
                connect_rate=connect_rate,
                connect_timeout=connect_timeout,
                connect_retries=connect_retries,
                keepalive=keepalive,
                allow_over_aws_limits=allow_over_aws_limits,
            ),
        )
    )
    aimed = aim(opts)
    with LiveView("send", quiet=opts.quiet) as view:

        async def main() -> tuple[SendReport, int | None]:
            with StopSignal() as stop:
                result = await run_send(
                    aimed,
                    options,
                    stop,
                    on_tick=lambda snapshot: view.update(_fields(snapshot)),
                    warn=lambda line: console_err(f"warning: {line}"),
                )
                return result, stop.exit_code

        result, exit_code = run(main())
    outputs = Outputs(opts.state_dir, "send")
    written = report and outputs.write(
        "--report", report, lambda path: write_report(path, result), suffix=".json"
    )
    if not opts.quiet:
        print_summary(result)
    if written and not opts.quiet:
        print(f"report: {written}")
    for problem in outputs.problems:
        console_err(f"error: {problem}")
    if exit_code is not None:
        console_err(
            f"{result['outcome']}: stopped early" + (f", report in {written}" if written else "")
        )
        raise typer.Exit(exit_code)
    problems = send_problems(result)
    if problems:
        raise PartialFailure("; ".join(problems))
    if outputs.problems:
        raise typer.Exit(EXIT_USAGE)


def _fields(snapshot: Snapshot) -> Fields:
    totals, last = snapshot.totals, snapshot.last_second
    return [
        ("phase", snapshot.phase),
        ("connected", f"{snapshot.connected}/{snapshot.things} ({snapshot.connect_failed} failed)"),
        ("msg/s", f"{last['published']} (target {snapshot.target_per_s:g})"),
        ("published", f"{totals.published}/{totals.scheduled} due"),
        ("acked", str(totals.acked)),
        ("errors", f"{totals.failed} failed, {totals.reconnects} reconnects"),
        ("ack p50/p99", f"{ms(snapshot.ack_p50_ms)} / {ms(snapshot.ack_p99_ms)}"),
    ]
