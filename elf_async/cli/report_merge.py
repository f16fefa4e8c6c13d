"""`elf-async report merge SHARD.json... -o merged.json`: the reports of a fleet's shards as one.

Exit codes: 0 the merged send (or subscribe) passes its verdict and every --threshold; 1 it
does not (a shard's report is missing, a thing never connected, a message not acknowledged, a
shard stopped early); 2 bad input (a file that is not a report of this version's schemas, two
reports of one shard, reports of different fleets, commands or QoS, a version 1 report: it has
no histograms), or an output file that could not be written (kept in the state dir); 3 a
threshold failed and nothing else did. Merging is elf_async.report.merge; the verdict
elf_async.report.verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from elf_async.cli._args import Html
from elf_async.cli._common import console_err, settings
from elf_async.cli._options import check_output_path
from elf_async.cli._output import Outputs
from elf_async.cli._summary import Rows, print_summary, send_rows, subscribe_rows
from elf_async.errors import EXIT_USAGE, PartialFailure, ThresholdFailed
from elf_async.report.junit import junit_xml, write_junit
from elf_async.report.merge import merge
from elf_async.report.model import SendReport, SubscribeReport
from elf_async.report.reading import read_report
from elf_async.report.thresholds import evaluate, parse_all
from elf_async.report.verdict import failure_of, judge_merge, judge_report


def command(
    ctx: typer.Context,
    reports: Annotated[
        list[Path],
        typer.Argument(
            metavar="SHARD.json...", help="The shards' --report files.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Write the merged report here.", show_default=False),
    ],
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold",
            help="Pass/fail rule on the merged report, repeatable, as `run`'s: ack.p99<250ms, "
            "error_rate<0.1%. A failed one exits with 3.",
            show_default=False,
        ),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option(help="Write a JUnit XML file: the merge and each threshold.")
    ] = None,
    html: Html = None,
) -> None:
    """Merge the shards' reports: counts summed, histograms merged, series by second."""
    opts = settings(ctx)
    thresholds = parse_all(threshold or [])
    check_output_path("--output", output)
    check_output_path("--junit", junit)
    check_output_path("--html", html)
    merged = merge([(str(path), read_report(path)) for path in reports])
    own = judge_report(merged)
    verdicts = evaluate(thresholds, merged)
    judgement = judge_merge(own, thresholds=verdicts)
    outputs = Outputs(opts.state_dir, "merge")
    written = outputs.report(merged, json_path=output, html_path=html, json_option="--output")
    if junit is not None:
        xml = junit_xml(
            name=f"report merge ({len(reports)} reports)",
            verdicts=verdicts,
            run_error=failure_of(own),
            duration_s=merged["duration_s"],
            summary=judgement.line(),
        )
        outputs.write("--junit", junit, lambda path: write_junit(path, xml), suffix=".xml")
    rows = _rows(merged) + [("threshold", v.describe()) for v in verdicts]
    print_summary(judgement, rows, quiet=opts.quiet, report=written)
    for problem in outputs.problems:
        console_err(f"error: {problem}")
    if own.reasons:
        raise PartialFailure("; ".join(own.reasons))
    if merged["outcome"] != "completed":
        raise PartialFailure(f"a shard was {merged['outcome']}: the measurement is incomplete")
    if outputs.problems:
        raise typer.Exit(EXIT_USAGE)
    failed = [v.threshold.expr for v in verdicts if not v.ok]
    if failed:
        raise ThresholdFailed(
            f"{len(failed)} of {len(verdicts)} thresholds failed: " + ", ".join(failed)
        )


def _rows(report: SendReport | SubscribeReport) -> Rows:
    """The merged figures, as send or subscribe prints them, and the shards merged."""
    shards = report.get("shards")
    rows: Rows = []
    if shards is not None:
        rows.append(
            (
                "shards",
                f"{shards['merged']} of {shards['count']} merged ({shards['missing']} missing)",
            )
        )
    if report["command"] == "send":
        return rows + send_rows(cast(SendReport, report))
    return rows + subscribe_rows(cast(SubscribeReport, report))
