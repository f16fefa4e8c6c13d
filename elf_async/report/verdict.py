"""Whether a command did its job, from its report: every verdict in one place. Pure logic.

Each function returns the problems found, one human line each; none means a pass. A problem
is a runtime failure (exit 1): the load did not happen as asked, so thresholds over what did
happen cannot judge it (`run` applies both and 1 wins over a threshold's 3, see
`elf_async.jobs.run.RunResult.exit_code`). The reports are those of elf_async.report.model.

- `send_problems`: `send`'s and `run`'s. A thing that never connected (it owes its whole
  schedule, so its messages are also due but not published), messages due but not published,
  QoS 1 messages never acknowledged, a lost --workers process (its things are not counted);
  for `run`, also certificates an interrupted create could not resolve.
- `subscribe_problems`: a subscriber that never connected.
"""

from __future__ import annotations

from collections.abc import Sequence

from elf_async.report.model import SendReport, SubscribeReport


def send_problems(report: SendReport, *, unresolved: Sequence[str] = ()) -> list[str]:
    """What went wrong in a send report; `unresolved` are the warnings of create's recovery
    (`RecoveryResult.unresolved`), which `run` passes."""
    messages, connections = report["messages"], report["connections"]
    problems = []
    if connections["things_failed"]:
        problems.append(f"{connections['things_failed']} things could not connect")
    if messages["unsent"]:
        problems.append(f"{messages['unsent']} messages were due but not published")
    if messages["failed"]:
        problems.append(f"{messages['failed']} messages failed (not acknowledged)")
    workers = report.get("workers")
    lost = workers["lost"] if workers else []
    if lost:
        problems.append("the measurement is incomplete: " + "; ".join(lost))
    problems += [f"create left a certificate unresolved: {line}" for line in unresolved]
    return problems


def subscribe_problems(report: SubscribeReport) -> list[str]:
    """What went wrong in a subscribe report: counts of loss and duplicates are measurements,
    not failures (a threshold judges them); a subscriber that never connected is."""
    failed = report["connections"]["things_failed"]
    return [f"{failed} subscribers could not connect"] if failed else []
