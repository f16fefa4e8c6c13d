"""What a command prints when it is done, on stdout: the verdict line first (decided in
elf_async.report.verdict), then a short table with human labels and units read from the
report, where the report was written, and one hint for what to do next where one helps.
With -q, the verdict line alone."""

from __future__ import annotations

from pathlib import Path

from elf_async.report.model import Connections, LatencySummary, SendReport, SubscribeReport
from elf_async.report.verdict import Judgement, milliseconds, number

Rows = list[tuple[str, str]]
MAX_ERRORS = 5  # connection errors listed, the most frequent first
REPORT_HINT = "--report FILE.json keeps every figure: per second, per thing, per error"
AWS_HINT = (
    "the same against AWS IoT: drop --local, with AWS credentials (the AWS config, the "
    "environment or --profile); README: Quick start"
)


def print_summary(
    judgement: Judgement,
    rows: Rows,
    *,
    quiet: bool,
    report: Path | None = None,
    hint: str | None = None,
) -> None:
    """Flushed: an error line on stderr that follows comes after it in a shared log too."""
    lines = [judgement.line()]
    if not quiet:
        width = max((len(label) for label, _ in rows), default=0) + 2
        lines += [f"  {label:<{width}}{value}" for label, value in rows]
        lines += [f"report: {report}"] if report is not None else []
        lines += [f"next: {hint}"] if hint is not None else []
    print("\n".join(lines), flush=True)


def send_rows(report: SendReport) -> Rows:
    """The send's figures: things, messages, rate, latencies, connection trouble."""
    messages, rate = report["messages"], report["rate"]
    connections, latency = report["connections"], report["latency_ms"]
    counts = [f"{messages['scheduled']} scheduled", f"{messages['published']} published"]
    if messages["acked"] is not None:
        counts.append(f"{messages['acked']} acknowledged")
    counts += _nonzero(
        (messages["failed"], "failed"),
        (messages["unsent"], "unsent"),
        (messages["retransmitted"], "sent again after a reconnect"),
    )
    per_thing = rate["per_thing_per_s"]
    rows = [
        _connected("things", report["fleet"]["things"], connections),
        ("messages", ", ".join(counts)),
        (
            "rate",
            f"{number(rate['achieved_per_s'] or 0.0)} msg/s achieved of "
            f"{number(rate['target_per_s'])} msg/s target"
            + (f" ({number(per_thing)}/s per thing)" if per_thing is not None else "")
            + f", over {rate['publish_window_s']:.1f} s",
        ),
    ]
    rows += _latency("ack latency", latency["ack"])
    rows += _latency("send lag", latency["lag"])
    rows += _latency("connect time", latency["connect"])
    workers = report.get("workers")
    if workers is not None:
        lost = workers["lost"]
        rows.append(
            ("workers", f"{workers['count']}" + (f", lost: {'; '.join(lost)}" if lost else ""))
        )
    return rows + _trouble(connections)


def subscribe_rows(report: SubscribeReport) -> Rows:
    """The subscribe's figures: subscribers, messages, rate, latencies, connection trouble."""
    messages, connections = report["messages"], report["connections"]
    counts = [
        f"{messages['received']} received",
        f"{messages['unique']} unique",
        f"{messages['lost']} lost",
        f"{messages['duplicates']} duplicates",
        f"{messages['out_of_order']} out of order",
    ]
    counts += _nonzero((messages["unstamped"], "unstamped (not judged)"))
    rows = [
        _connected("subscribers", report["fleet"]["things"], connections),
        ("messages", ", ".join(counts)),
        ("rate", f"{number(report['rate']['achieved_per_s'] or 0.0)} msg/s received"),
    ]
    rows += _latency("end-to-end", report["latency_ms"]["end_to_end"])
    rows += _latency("connect time", report["latency_ms"]["connect"])
    return rows + _trouble(connections)


def _connected(label: str, total: int, connections: Connections) -> tuple[str, str]:
    failed = connections["things_failed"]
    return label, f"{total - failed} of {total} connected" + (
        f", {failed} never did" if failed else ""
    )


def _latency(label: str, summary: LatencySummary) -> Rows:
    if not summary["count"] or summary["p50"] is None:
        return []
    p99, top = summary["p99"] or 0.0, summary["max"] or 0.0
    return [
        (
            label,
            f"p50 {milliseconds(summary['p50'])}, p99 {milliseconds(p99)}, max {milliseconds(top)}",
        )
    ]


def _trouble(connections: Connections) -> Rows:
    rows = []
    if connections["reconnects"]:
        rows.append(("reconnects", str(connections["reconnects"])))
    for reason, count in list(connections["errors"].items())[:MAX_ERRORS]:
        rows.append(("connect error", f"{count} x {reason}"))
    return rows


def _nonzero(*counts: tuple[int, str]) -> list[str]:
    return [f"{count} {what}" for count, what in counts if count]


def subscribe_hint(report: SubscribeReport, *, report_path: Path | None) -> str | None:
    if report["messages"]["unstamped"]:
        return (
            "messages without elf-async's stamp (thing, seq, ts) are counted, not judged for "
            "loss or latency: send them with elf-async send (stamped by default)"
        )
    return None if report_path else REPORT_HINT
