"""Whether a command did its job, from its report: every verdict in one place. Pure logic.

Each function returns the problems found, one human line each; none means a pass. A problem
is a runtime failure (exit 1): the load did not happen as asked, so thresholds over what did
happen cannot judge it (`run` applies both and 1 wins over a threshold's 3, see
`elf_async.jobs.run.RunResult.exit_code`). The reports are those of elf_async.report.model.

- `send_problems`: `send`'s and `run`'s. A thing that never connected (it owes its whole
  schedule, so its messages are also due but not published), messages due but not published,
  QoS 1 messages never acknowledged, a lost --workers process (its things are not counted);
  for `run`, also certificates an interrupted create could not resolve; with --commands, a
  command due but not sent, not delivered, or never replied to (`commands_problems`).
- `subscribe_problems`: a subscriber that never connected.
- both: a session takeover, connections the broker closed right after they reopened, again and
  again, because another client connected with the same client id; and, in a report made by
  `report merge`, a shard whose report is missing.

`judge_send`, `judge_subscribe`, `judge_run` and `judge_merge` turn those problems (and the
thresholds, and `run`'s failed phases) into the one line each command prints first, and alone
with `-q`: passed or failed, why, and the figures that say so (achieved against target,
acknowledged against scheduled, the 99th percentile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from elf_async.report.model import (
    CommonReport,
    Connections,
    LatencySummary,
    SendReport,
    SubscribeReport,
)
from elf_async.report.thresholds import Verdict

# Connections taken over this many times: another client uses the same client ids, so the
# counts measure a tug of war, not the load (one takeover may be a single stray client).
TAKEOVERS_FAIL = 2


def takeover_problem(connections: Connections) -> list[str]:
    """A session takeover, named: the broker keeps one connection per client id."""
    taken = connections["takeovers"]
    if taken < TAKEOVERS_FAIL:
        return []
    return [
        f"session takeover: the broker closed {taken} connections right after they reopened, "
        "because another client connected with the same client id (a send or subscribe on "
        "the same things in another process?)"
    ]


def shards_problem(report: CommonReport) -> list[str]:
    """A merged report without every shard's: the fleet's load is not all counted."""
    shards = report.get("shards")
    if not shards or not shards["missing"]:
        return []
    return [
        f"{shards['missing']} of {shards['count']} shards are missing: the measurement is "
        "incomplete"
    ]


def send_problems(report: SendReport, *, unresolved: Sequence[str] = ()) -> list[str]:
    """What went wrong in a send report; `unresolved` are the warnings of create's recovery
    (`RecoveryResult.unresolved`), which `run` passes."""
    messages, connections = report["messages"], report["connections"]
    problems = shards_problem(report) + takeover_problem(connections)
    if connections["things_failed"]:
        problems.append(f"{connections['things_failed']} things could not connect")
    if messages["unsent"]:
        problems.append(f"{messages['unsent']} messages were due but not published")
    if messages["failed"]:
        refused = report.get("reason_codes") or {}
        why = ", ".join(f"{count} {reason}" for reason, count in refused.items())
        problems.append(
            f"{messages['failed']} messages failed (not acknowledged"
            + (f"; refused: {why})" if why else ")")
        )
    workers = report.get("workers")
    lost = workers["lost"] if workers else []
    if lost:
        problems.append("the measurement is incomplete: " + "; ".join(lost))
    problems += [f"create left a certificate unresolved: {line}" for line in unresolved]
    return problems + commands_problems(report)


def commands_problems(report: SendReport) -> list[str]:
    """A `--commands` send: every command due was sent, reached its device, and its reply
    came back (a command round trip that did not happen is a load that did not happen)."""
    commands = report.get("commands")
    if commands is None:
        return []
    problems = [commands["error"]] if commands["error"] else []
    if commands["due"] > commands["sent"]:
        problems.append(f"{commands['due'] - commands['sent']} commands were due but not sent")
    undelivered = commands["sent"] - commands["delivered"]
    if undelivered > 0:
        problems.append(f"{undelivered} commands never reached their device")
    if commands["lost"]:
        problems.append(f"{commands['lost']} of {commands['sent']} commands got no reply")
    return problems


def subscribe_problems(report: SubscribeReport) -> list[str]:
    """What went wrong in a subscribe report: counts of loss and duplicates are measurements,
    not failures (a threshold judges them); a subscriber that never connected, or a session
    takeover, is."""
    connections = report["connections"]
    problems = shards_problem(report) + takeover_problem(connections)
    if connections["things_failed"]:
        problems.append(f"{connections['things_failed']} subscribers could not connect")
    return problems


@dataclass(frozen=True, slots=True)
class Judgement:
    """Whether a command did its job: `reasons` it did not (none: it passed, unless stopped
    early) and the headline `figures`."""

    command: str
    outcome: str  # the report's: completed, interrupted, terminated
    reasons: Sequence[str]
    figures: Sequence[str]

    @property
    def passed(self) -> bool:
        return self.outcome == "completed" and not self.reasons

    def line(self) -> str:
        """``send passed: 75 of 75 messages acknowledged, ...`` or ``send failed: why (...)``."""
        figures = ", ".join(self.figures)
        if self.passed:
            return f"{self.command} passed: {figures}"
        if self.outcome != "completed":
            head = f"{self.command} {self.outcome}: stopped early"
        else:
            head = f"{self.command} failed: {'; '.join(self.reasons)}"
        return f"{head} ({figures})" if figures else head


def judge_send(report: SendReport, *, unresolved: Sequence[str] = ()) -> Judgement:
    """`send`'s verdict: `send_problems`, with its figures."""
    return Judgement(
        report["command"],
        report["outcome"],
        send_problems(report, unresolved=unresolved),
        send_figures(report),
    )


def send_figures(report: SendReport) -> list[str]:
    """Acknowledged (QoS 1) or published (QoS 0) against scheduled, achieved against target
    rate, and the 99th percentile of the acknowledgement (QoS 1) or of the lag (QoS 0)."""
    messages, rate = report["messages"], report["rate"]
    acked = messages["acked"]
    latencies = report["latency_ms"]
    if acked is not None:
        through, latency = f"{acked} of {messages['scheduled']} messages acknowledged", "ack"
        summary = latencies["ack"]
    else:
        through = f"{messages['published']} of {messages['scheduled']} messages published"
        latency, summary = "lag", latencies["lag"]
    achieved = rate["achieved_per_s"] or 0.0
    figures = [through, f"{number(achieved)} of {number(rate['target_per_s'])} msg/s achieved"]
    if summary["count"]:
        figures.append(f"{latency} p99 {_ms(summary)}")
    commands = report.get("commands")
    if commands is not None:
        figures.append(f"{commands['replied']} of {commands['due']} commands replied")
        if commands["round_trip"]["count"]:
            figures.append(f"command round trip p99 {_ms(commands['round_trip'])}")
    return figures


def judge_subscribe(report: SubscribeReport) -> Judgement:
    """`subscribe`'s verdict: `subscribe_problems`, with what arrived."""
    messages = report["messages"]
    figures = [
        f"{messages['received']} messages received ({messages['lost']} lost, "
        f"{messages['duplicates']} duplicates)"
    ]
    if messages["unstamped"]:
        figures.append(f"{messages['unstamped']} unstamped (not judged)")
    end_to_end = report["latency_ms"]["end_to_end"]
    if end_to_end["count"]:
        figures.append(f"end-to-end p99 {_ms(end_to_end)}")
    return Judgement(report["command"], report["outcome"], subscribe_problems(report), figures)


def judge_run(
    report: SendReport | None,
    *,
    failure: str | None,
    thresholds: Sequence[Verdict],
    interrupted: str | None = None,
) -> Judgement:
    """`run`'s verdict: its `failure` (a failed phase, send's own verdict included), else the
    failed thresholds; the send phase's figures and how many thresholds held."""
    figures = send_figures(report) if report is not None else []
    return _thresholded("run", interrupted or "completed", failure, figures, thresholds)


def judge_report(report: SendReport | SubscribeReport) -> Judgement:
    """A send's or a subscribe's verdict, by the report's command (`report merge`'s reports)."""
    if report["command"] == "send":
        return judge_send(cast(SendReport, report))
    return judge_subscribe(cast(SubscribeReport, report))


def failure_of(judgement: Judgement) -> str | None:
    """A failed verdict as `run` and `report merge` word it: ``send failed: why``."""
    return (
        f"{judgement.command} failed: {'; '.join(judgement.reasons)}" if judgement.reasons else None
    )


def judge_merge(own: Judgement, *, thresholds: Sequence[Verdict]) -> Judgement:
    """`report merge`'s verdict: the merged report's `own` (`judge_report`: a missing shard
    fails it, see `shards_problem`), then its thresholds, as `run` words them."""
    return _thresholded("merge", own.outcome, failure_of(own), list(own.figures), thresholds)


def _thresholded(
    command: str,
    outcome: str,
    failure: str | None,
    figures: list[str],
    thresholds: Sequence[Verdict],
) -> Judgement:
    """A command's `failure` (its own verdict), else its failed thresholds."""
    failed = [v for v in thresholds if not v.ok]
    if thresholds and not failed:
        figures.append(f"{len(thresholds)} thresholds held")
    reasons: list[str] = []
    if failure is not None:
        reasons.append(failure)
    elif failed:
        reasons.append(
            f"{len(failed)} of {len(thresholds)} thresholds failed: "
            + "; ".join(v.describe().removesuffix(" FAILED") for v in failed)
        )
    return Judgement(command, outcome, reasons, figures)


def _ms(summary: LatencySummary) -> str:
    return "-" if summary["p99"] is None else milliseconds(summary["p99"])


def number(value: float) -> str:
    """A rate or a count for people: 25, 2.5, 0.333, 12,345."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def milliseconds(value: float) -> str:
    """A latency for people: 0.96 ms, 39.8 ms, 608 ms, 1,234 ms."""
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:,.{digits}f} ms"
