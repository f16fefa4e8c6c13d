"""What a run shows while it runs (a rich live table on a terminal, a plain line every few
seconds otherwise, nothing with --quiet) and the summary table at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import cast

from rich.console import Console
from rich.live import Live
from rich.table import Table

from elf_async.report.model import LatencySummary, SendReport, SubscribeReport

Fields = list[tuple[str, str]]
PLAIN_INTERVAL = 5.0


class LiveView:
    """Shows label/value pairs; on stderr so that stdout stays for results."""

    def __init__(self, title: str, *, quiet: bool, tty: bool | None = None) -> None:
        self.title = title
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> LiveView:
        if not self.quiet and self.tty:
            self._live = Live(
                _table(self.title, []), console=Console(stderr=True), auto_refresh=False
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, fields: Fields) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(_table(self.title, fields), refresh=True)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_INTERVAL:
            self._last_plain = now
            line = ", ".join(f"{label} {value}" for label, value in fields)
            print(f"{self.title}: {line}", file=sys.stderr, flush=True)


def _table(title: str, fields: Fields) -> Table:
    table = Table(title=title, show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in fields:
        table.add_row(label, value)
    return table


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_summary(report: SendReport | SubscribeReport) -> None:
    """The end-of-run table, from the report itself (what is printed is what is saved)."""
    table = Table(title=f"elf-async {report['command']}: {report['outcome']}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for name, value in report["messages"].items():
        if value is not None:
            table.add_row(f"messages {name}", str(value))
    connections = report["connections"]
    for name, value in connections.items():
        if name != "errors":
            table.add_row(f"connections {name}", str(value))
    for name, value in report["rate"].items():
        if value is not None:
            table.add_row(f"rate {name}", str(value))
    latencies = cast(Mapping[str, LatencySummary], report["latency_ms"])  # each one a summary
    for name, summary in latencies.items():
        if summary["count"]:
            table.add_row(
                f"{name} ms p50/p99/max",
                f"{summary['p50']} / {summary['p99']} / {summary['max']}",
            )
    Console(highlight=False).print(table)
    for reason, count in list(connections["errors"].items())[:5]:
        print(f"  {count} x {reason}")
