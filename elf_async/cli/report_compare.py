"""`elf-async report compare BASE.json NEW.json`: a run's key metrics against a previous run's.

Exit codes: 0 no metric regressed beyond --max-regression; 2 bad input (a file that is not a
report of this version's schemas, reports of different commands, a bad --max-regression, an
--html that cannot be written);
3 a metric regressed beyond it. The comparison is elf_async.report.compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elf_async.cli._args import Html
from elf_async.cli._options import check_output_path
from elf_async.errors import ThresholdFailed
from elf_async.report.compare import (
    DEFAULT_MAX_REGRESSION,
    compare,
    parse_max_regression,
    regressions,
)
from elf_async.report.html import render_compare_html, write_html
from elf_async.report.reading import read_report

_HEADER = ("metric", "base", "new", "change", "verdict")


def command(
    base: Annotated[Path, typer.Argument(metavar="BASE.json", help="The reference report.")],
    new: Annotated[Path, typer.Argument(metavar="NEW.json", help="The report to judge.")],
    max_regression: Annotated[
        str,
        typer.Option(
            help="How much worse than BASE a metric may be: a percentage or a fraction of its "
            "base value. Beyond it, exit 3."
        ),
    ] = DEFAULT_MAX_REGRESSION,
    html: Html = None,
) -> None:
    """Compare two reports: achieved rate, ack p50/p99/p999, lag p99, connect p99, error rate,
    reconnects, with their changes; exit 3 when one regressed beyond --max-regression."""
    limit = parse_max_regression(max_regression)
    check_output_path("--html", html)
    base_report, new_report = read_report(base), read_report(new)
    changes = compare(base_report, new_report, max_regression=limit)
    rows = [_HEADER, *(c.row() for c in changes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    regressed = regressions(changes)
    if regressed:
        head = (
            "compare failed: "
            + ", ".join(f"{c.metric.label} {c.row()[3]}" for c in regressed)
            + f" (limit {max_regression})"
        )
    else:
        head = f"compare passed: no metric regressed beyond {max_regression}"
    lines = [head] + [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    print("\n".join(lines), flush=True)
    if html is not None:
        page = render_compare_html(
            base_report, new_report, rows=rows[1:], verdict=head, passed=not regressed
        )
        write_html(html, page)
    if regressed:
        raise ThresholdFailed(f"{len(regressed)} metrics regressed beyond {max_regression}")
