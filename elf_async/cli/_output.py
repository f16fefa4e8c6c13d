"""Output files (`--report`, `--html`, `--junit`) written after the work: where the user
asked, or else kept in the state dir. Their paths were checked before the work
(elf_async.cli._options.check_output_path), but a disk can fill up and a directory can go away
while a run lasts: the results of a run must not be lost with it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from elf_async.errors import UsageError
from elf_async.report.document import write_report
from elf_async.report.html import render_html, write_html
from elf_async.report.model import RunReport, SendReport, SubscribeReport, UnsentRunReport

FALLBACK_DIR = "reports"  # <state-dir>/reports/<command>-<UTC time>.<ext>


class Outputs:
    """A command's output files; `problems` has one line per file not written where asked."""

    def __init__(self, state_dir: Path, command: str) -> None:
        self.state_dir = state_dir
        self.command = command
        self.problems: list[str] = []

    def write(
        self, option: str, path: Path, write: Callable[[Path], None], *, suffix: str
    ) -> Path | None:
        """`write` the file to `path`, else to the state dir's fallback name; return where the
        file is (None: nowhere)."""
        try:
            write(path)
            return path
        except (OSError, UsageError) as exc:
            reason = _reason(exc)
        kept = self._fallback(suffix)
        try:
            write(kept)
        except (OSError, UsageError) as exc:
            self.problems.append(
                f"{option} {path}: {reason}; it could not be kept in {kept} either: {_reason(exc)}"
            )
            return None
        self.problems.append(f"{option} {path}: {reason}; kept it in {kept} instead")
        return kept

    def report(
        self,
        document: SendReport | SubscribeReport | RunReport | UnsentRunReport,
        *,
        json_path: Path | None,
        html_path: Path | None,
        json_option: str = "--report",
    ) -> Path | None:
        """The report as JSON and as an HTML page, each where asked (if asked); where the JSON
        is (None: nowhere)."""
        written = None
        if json_path is not None:
            written = self.write(
                json_option, json_path, lambda path: write_report(path, document), suffix=".json"
            )
        if html_path is not None:
            page = render_html(document)
            self.write("--html", html_path, lambda path: write_html(path, page), suffix=".html")
        return written

    def _fallback(self, suffix: str) -> Path:
        directory = self.state_dir / FALLBACK_DIR
        stem = f"{self.command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        candidate, n = directory / f"{stem}{suffix}", 1
        while candidate.exists():
            n += 1
            candidate = directory / f"{stem}-{n}{suffix}"
        return candidate


def _reason(exc: BaseException) -> str:
    """The OS's reason (`No space left on device`), without the path said already."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc)
