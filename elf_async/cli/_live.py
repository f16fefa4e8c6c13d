"""What a send or a subscribe shows while it runs: a rich live table on a terminal (with a bar
for the phase), a plain line every `PLAIN_INTERVAL` seconds otherwise (a sign of life in CI
logs; a shorter run writes none), nothing with --quiet. The last frame is drawn from the
report, so it shows the final figures."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from elf_async.dataplane.sender import Snapshot
from elf_async.report.model import SendReport, SubscribeReport
from elf_async.report.verdict import milliseconds, number

Fields = list[tuple[str, str]]
Frame = tuple[Fields, float | None]
"""What one frame shows: label/value pairs, and how far the phase is (0 to 1; None: no bar)."""
PLAIN_INTERVAL = 30.0
BAR_WIDTH = 30


class LiveView:
    """Shows label/value pairs and how far the phase is; on stderr so that stdout stays for
    results."""

    def __init__(self, title: str, *, quiet: bool, tty: bool | None = None) -> None:
        self.title = title
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._live: Live | None = None
        self._last_plain = time.monotonic()
        self._progress: float | None = None

    def __enter__(self) -> LiveView:
        if not self.quiet and self.tty:
            self._live = Live(
                _table(self.title, [], None), console=Console(stderr=True), auto_refresh=False
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, frame: Frame) -> None:
        if self.quiet:
            return
        fields, progress = frame
        self._progress = progress if progress is not None else self._progress
        if self._live is not None:
            self._live.update(_table(self.title, fields, self._progress), refresh=True)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_INTERVAL:
            self._last_plain = now
            shown = (
                fields if self._progress is None else [*fields, ("done", f"{self._progress:.0%}")]
            )
            line = ", ".join(f"{label} {value}" for label, value in shown)
            print(f"{self.title}: {line}", file=sys.stderr, flush=True)

    def finish(self, frame: Frame) -> None:
        """The last frame, with the final figures (the summary follows: no plain line)."""
        if self._live is not None:
            self.update(frame)


def _table(title: str, fields: Fields, progress: float | None) -> Table:
    table = Table(title=title, show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    if progress is not None:
        table.add_row(
            f"{progress:.0%}", ProgressBar(total=1.0, completed=progress, width=BAR_WIDTH)
        )
    for label, value in fields:
        table.add_row(label, value)
    return table


def ms(value: float | None) -> str:
    return "-" if value is None else milliseconds(value)


def _seconds(value: float) -> str:
    return f"{value:.0f}s"


def send_frame(snapshot: Snapshot) -> Frame:
    """A send's live figures, once a second, and how much of the schedule has fallen due."""
    totals, last = snapshot.totals, snapshot.last_second
    if snapshot.sending_s is None:
        left = f"{_seconds(snapshot.span_s)} to send once connected"
    else:
        left = f"{_seconds(max(0.0, snapshot.span_s - snapshot.sending_s))} left"
    fields = [
        ("phase", str(snapshot.phase)),
        ("time", f"{_seconds(snapshot.elapsed)} elapsed, {left}"),
        ("connected", f"{snapshot.connected}/{snapshot.things} ({snapshot.connect_failed} failed)"),
        ("msg/s", f"{last['published']} (target {number(snapshot.target_per_s)})"),
        ("published", f"{totals.published}/{totals.scheduled} due"),
        ("acked", str(totals.acked)),
        ("errors", f"{totals.failed} failed, {totals.reconnects} reconnects"),
        ("ack p50/p99", f"{ms(snapshot.ack_p50_ms)} / {ms(snapshot.ack_p99_ms)}"),
    ]
    if "target_connected" in last:  # --stages, --churn, --storm: the plan beside the figures
        stage = "-" if last["stage"] is None else str(last["stage"])
        fields.insert(3, ("stage", f"{stage} ({last['target_connected']} devices planned)"))
    return fields, (totals.scheduled / snapshot.planned if snapshot.planned else None)


def send_final_frame(report: SendReport) -> Frame:
    """The same figures from the report: the final ones."""
    messages, connections, rate = report["messages"], report["connections"], report["rate"]
    ack = report["latency_ms"]["ack"]
    things = report["fleet"]["things"]
    done = report["outcome"] == "completed"
    fields = [
        ("phase", "done" if done else report["outcome"]),
        ("time", f"{_seconds(report['duration_s'])} elapsed" + (", 0s left" if done else "")),
        ("connected", f"{things - connections['things_failed']}/{things} "
         f"({connections['things_failed']} failed)"),
        ("msg/s", f"{number(rate['achieved_per_s'] or 0.0)} on average "
         f"(target {number(rate['target_per_s'])})"),
        ("published", f"{messages['published']}/{messages['scheduled']} due"),
        ("acked", "-" if messages["acked"] is None else str(messages["acked"])),
        ("errors", f"{messages['failed']} failed, {connections['reconnects']} reconnects"),
        ("ack p50/p99", f"{ms(ack['p50'])} / {ms(ack['p99'])}"),
    ]  # fmt: skip
    return fields, 1.0 if done else None


def subscribe_frame(row: Mapping[str, Any]) -> Frame:
    """A subscribe's live figures, once a second."""
    fields = [
        ("connected", f"{row['connected']}/{row['things']}"),
        ("msg/s", str(row["received"])),
        ("lost", str(row["lost"])),
        ("duplicates", str(row["duplicates"])),
        ("latency p99", ms(row["p99"])),
    ]
    return fields, None


def subscribe_final_frame(report: SubscribeReport) -> Frame:
    """The same figures from the report: the final ones."""
    messages, subscribers = report["messages"], report["fleet"]["things"]
    failed = report["connections"]["things_failed"]
    fields = [
        ("connected", f"{subscribers - failed}/{subscribers}"),
        ("msg/s", f"{number(report['rate']['achieved_per_s'] or 0.0)} on average"),
        ("lost", str(messages["lost"])),
        ("duplicates", str(messages["duplicates"])),
        ("latency p99", ms(report["latency_ms"]["end_to_end"]["p99"])),
    ]
    return fields, None
