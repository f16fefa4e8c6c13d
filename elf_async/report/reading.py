"""A report read back from its JSON file, for the commands that take one (`report merge`,
`compare`, `html`): the one reader, so they all accept and refuse the same files.

A reader accepts every schema it can read (`SCHEMAS`: ``elf-async/report/1`` and ``/2``, which
only adds fields) and refuses anything else with one line naming the file: a JSON file that is
not a report, a report of a schema this version does not know, a file it cannot read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from elf_async.errors import UsageError
from elf_async.report.model import SCHEMAS, ReportHead, fields_of

SCHEMA_PREFIX: Final = "elf-async/report/"


def read_report(path: Path) -> dict[str, Any]:
    """The report in `path`, its head checked (every field of `ReportHead`, a known schema)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{path}: cannot read it: {reason}") from exc
    return parse_report(text, source=str(path))


def parse_report(text: str, *, source: str) -> dict[str, Any]:
    """`text` as a report; `source` names it in the error."""
    try:
        report = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source}: not JSON ({exc})") from exc
    return check_report(report, source=source)


def check_report(report: object, *, source: str) -> dict[str, Any]:
    """`report` (parsed JSON) as a report this version reads, else a `UsageError`."""
    if not isinstance(report, dict) or not isinstance(report.get("schema"), str):
        raise UsageError(f"{source}: not an elf-async report (it has no schema field)")
    schema = report["schema"]
    if not schema.startswith(SCHEMA_PREFIX):
        raise UsageError(f"{source}: not an elf-async report (schema {schema!r})")
    if schema not in SCHEMAS:
        raise UsageError(
            f"{source}: schema {schema!r} is unknown to elf-async (it reads "
            f"{', '.join(SCHEMAS)}): a newer version wrote it"
        )
    missing = [f.name for f in fields_of(ReportHead) if f.required and f.name not in report]
    if missing:
        raise UsageError(f"{source}: not a complete report (no {', '.join(missing)})")
    return report
