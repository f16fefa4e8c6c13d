"""`elf-async report html REPORT.json -o FILE`: a report (schema 1 or 2) as one HTML page.

Exit codes: 0 written; 2 bad input: a file that cannot be read, is not a report or is of a
schema this version does not know, or an output that cannot be written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from elf_async.cli._common import settings
from elf_async.cli._options import check_output_path
from elf_async.errors import UsageError
from elf_async.report.html import render_html, write_html
from elf_async.report.reading import read_report


def command(
    ctx: typer.Context,
    report: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="A report written by --report.")
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Write the HTML page here.", show_default=False)
    ],
) -> None:
    """Write REPORT.json as one HTML page with charts and tables that works offline."""
    check_output_path("-o", output)
    document = read_report(report)
    try:
        page = render_html(document)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # A report edited by hand (or truncated) lacks what its schema promises.
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        schema = document["schema"]
        raise UsageError(f"{report}: not a well-formed {schema} report ({what})") from exc
    write_html(output, page, option="-o")
    if not settings(ctx).quiet:
        print(f"wrote {output}")
