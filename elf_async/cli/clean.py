"""`elf-async clean` (being written)."""

from __future__ import annotations

import typer


def command(ctx: typer.Context) -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
