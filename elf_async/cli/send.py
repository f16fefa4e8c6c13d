"""`elf-async send [MESSAGE]`: publish from every thing over its own mutual-TLS connection.

Exit codes: 0 every scheduled message was published (and, at QoS 1, acknowledged) by things
that all connected; 1 some thing never connected (it owes its whole schedule) or some message
was not published or not acknowledged, or a --workers process died (the report says which;
elf_async.report.verdict decides); 2 bad input, or a report that could not be written at the end
(it is kept in the state dir; 1, 130 and 143 win over it); 130 Ctrl-C; 143 SIGTERM. The report
is written in every case but bad input.
"""

from __future__ import annotations

import typer

from elf_async.cli._args import SendArgs, takes
from elf_async.cli._common import console_err, run, settings
from elf_async.cli._live import LiveView, send_final_frame, send_frame
from elf_async.cli._options import parse_metrics_options
from elf_async.cli._output import Outputs
from elf_async.cli._scenario import send_options
from elf_async.cli._summary import REPORT_HINT, print_summary, send_rows
from elf_async.dataplane.mqtt import debug_paho
from elf_async.errors import EXIT_USAGE, PartialFailure
from elf_async.jobs.live_metrics import serving
from elf_async.jobs.send import run_send
from elf_async.jobs.target import aim
from elf_async.report.model import SendReport
from elf_async.report.verdict import judge_send
from elf_async.stopping import StopSignal


@takes
def command(ctx: typer.Context, args: SendArgs) -> None:
    """Publish MESSAGE from each thing at an open-loop rate; measure acks, lag and latency."""
    opts = settings(ctx)
    debug_paho(opts.verbose)
    options = send_options(ctx, args)
    metrics_options = parse_metrics_options(args.metrics)
    live = ctx.with_resource(serving(metrics_options, command="send"))
    aimed = aim(opts)
    with LiveView("send", quiet=opts.quiet) as view:

        async def main() -> tuple[SendReport, int | None]:
            with StopSignal() as stop:
                result = await run_send(
                    aimed,
                    options,
                    stop,
                    on_tick=lambda snapshot: view.update(send_frame(snapshot)),
                    warn=lambda line: console_err(f"warning: {line}"),
                    metrics=live,
                )
                return result, stop.exit_code

        result, exit_code = run(main())
        view.finish(send_final_frame(result))
    outputs = Outputs(opts.state_dir, "send")
    written = outputs.report(result, json_path=args.report, html_path=args.html)
    judgement = judge_send(result)
    print_summary(
        judgement,
        send_rows(result),
        quiet=opts.quiet,
        report=written or None,
        hint=None if args.report else REPORT_HINT,
    )
    for problem in outputs.problems:
        console_err(f"error: {problem}")
    if exit_code is not None:
        console_err(
            f"{result['outcome']}: stopped early" + (f", report in {written}" if written else "")
        )
        raise typer.Exit(exit_code)
    if judgement.reasons:
        raise PartialFailure("; ".join(judgement.reasons))
    if outputs.problems:
        raise typer.Exit(EXIT_USAGE)
