"""`elf-async report ...`: commands that read reports back (one thin module per subcommand)."""

from __future__ import annotations

import typer

from elf_async.cli import report_html
from elf_async.cli._common import Command

app = typer.Typer(
    name="report",
    help="Read reports written by --report: turn one into an HTML page.",
    no_args_is_help=True,
)

app.command("html", cls=Command)(report_html.command)
