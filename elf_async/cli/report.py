"""`elf-async report merge | compare | html`: work on JSON reports already written (no AWS, no
MQTT); one thin module per subcommand."""

from __future__ import annotations

import typer

from elf_async.cli import report_compare, report_html, report_merge
from elf_async.cli._common import Command

app = typer.Typer(
    name="report",
    help="Work on --report files: merge the shards of one fleet, compare two runs, draw one.",
    no_args_is_help=True,
)
app.command("merge", cls=Command)(report_merge.command)
app.command("compare", cls=Command)(report_compare.command)
app.command("html", cls=Command)(report_html.command)
