"""What every command shares: the settings, output helpers, running a coroutine on uvloop."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
import uvloop

from elf_async.config import Settings

T = TypeVar("T")
_verbose = False


def set_verbose(value: bool) -> None:
    global _verbose
    _verbose = value


def verbose_requested() -> bool:
    return _verbose


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def console_err(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"elf-async: {message}", file=sys.stderr, flush=True)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh uvloop event loop."""
    return uvloop.run(coro)
