"""`elf-async subscribe`: one subscriber per thing; counts loss, duplicates, order, latency.

Exit codes: 0 done (the counts are in the summary and report); 1 some subscriber could not
connect; 2 bad input, or a report that could not be written at the end (it is kept in the state
dir; 1, 130 and 143 win over it); 130 Ctrl-C; 143 SIGTERM (the report is written in these cases
too).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from elf_async.cli._args import SubscribeArgs, takes
from elf_async.cli._common import console_err, run, settings
from elf_async.cli._live import LiveView, subscribe_final_frame, subscribe_frame
from elf_async.cli._options import parse_metrics_options, parse_subscribe_options
from elf_async.cli._output import Outputs
from elf_async.cli._summary import print_summary, subscribe_hint, subscribe_rows
from elf_async.dataplane.mqtt import debug_paho
from elf_async.errors import EXIT_USAGE, PartialFailure
from elf_async.jobs.live_metrics import serving
from elf_async.jobs.subscribe import run_subscribe
from elf_async.jobs.target import aim
from elf_async.report.model import SubscribeReport
from elf_async.report.verdict import judge_subscribe
from elf_async.stopping import StopSignal


@takes
def command(
    ctx: typer.Context,
    args: SubscribeArgs,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="A rate line instead of every message.")
    ] = False,
) -> None:
    """Subscribe as each thing and print what arrives (topic, size, payload)."""
    opts = settings(ctx)
    debug_paho(opts.verbose)
    quiet = quiet or opts.quiet
    options = parse_subscribe_options(args)
    metrics_options = parse_metrics_options(args.metrics)
    live = ctx.with_resource(serving(metrics_options, command="subscribe"))
    aimed = aim(opts)

    def show(topic: str, payload: bytes | bytearray) -> None:
        text = bytes(payload).decode("utf-8", errors="replace")
        print(f"{topic} ({len(payload)} bytes) {text}", flush=True)

    # The live view replaces the printed messages with --quiet; nothing at all with -q globally.
    with LiveView("subscribe", quiet=not quiet or opts.quiet) as view:

        async def main() -> tuple[SubscribeReport, int | None]:
            def warn(line: str) -> None:
                console_err(f"warning: {line}")

            def tick(row: dict[str, Any]) -> None:
                view.update(subscribe_frame(row))

            with StopSignal() as stop:
                if quiet:
                    result = await run_subscribe(
                        aimed, options, stop, on_tick=tick, warn=warn, metrics=live
                    )
                else:
                    result = await run_subscribe(
                        aimed, options, stop, on_message=show, warn=warn, metrics=live
                    )
                return result, stop.exit_code

        result, exit_code = run(main())
        view.finish(subscribe_final_frame(result))
    sys.stdout.flush()
    outputs = Outputs(opts.state_dir, "subscribe")
    written = outputs.report(result, json_path=args.report, html_path=args.html)
    judgement = judge_subscribe(result)
    print_summary(
        judgement,
        subscribe_rows(result),
        quiet=opts.quiet,
        report=written or None,
        hint=subscribe_hint(result, report_path=args.report),
    )
    for problem in outputs.problems:
        console_err(f"error: {problem}")
    if exit_code is not None:
        console_err(f"{result['outcome']}" + (f", report in {written}" if written else ""))
        raise typer.Exit(exit_code)
    if judgement.reasons:
        raise PartialFailure("; ".join(judgement.reasons))
    if outputs.problems:
        raise typer.Exit(EXIT_USAGE)
