"""Output files written after the work (elf_async.cli._output): where asked, else kept in the
state dir under a name of their own, and one line saying so. /dev/full is a real full disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elf_async.cli._output import Outputs
from elf_async.report.document import write_report
from elf_async.report.junit import write_junit

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
FULL = Path("/dev/full")


def test_an_output_is_written_where_asked(tmp_path: Path) -> None:
    outputs = Outputs(tmp_path / "state", "send")
    report = tmp_path / "r.json"
    assert (
        outputs.write("--report", report, lambda p: write_report(p, {}), suffix=".json") == report
    )
    assert report.read_text() == "{}\n"
    assert outputs.problems == []


def test_an_output_that_cannot_be_written_is_kept_in_the_state_dir(tmp_path: Path) -> None:
    outputs = Outputs(tmp_path, "run")
    first = outputs.write("--junit", FULL, lambda p: write_junit(p, b"<a/>\n"), suffix=".xml")
    second = outputs.write("--junit", FULL, lambda p: write_junit(p, b"<b/>\n"), suffix=".xml")
    assert first is not None
    assert second is not None
    assert re.fullmatch(r"run-\d{8}T\d{6}Z\.xml", first.name)
    assert first.parent == second.parent == tmp_path / "reports"
    assert first != second  # two outputs in one second keep both
    assert (first.read_text(), second.read_text()) == ("<a/>\n", "<b/>\n")
    assert outputs.problems == [
        f"--junit /dev/full: No space left on device; kept it in {path} instead"
        for path in (first, second)
    ]


def test_an_output_that_cannot_be_kept_either_says_so(tmp_path: Path) -> None:
    outputs = Outputs(FULL / "state", "send")
    assert outputs.write("--report", FULL, lambda p: write_report(p, {}), suffix=".json") is None
    (problem,) = outputs.problems
    assert problem.startswith("--report /dev/full: No space left on device; it could not be kept")
    assert problem.endswith(": Not a directory")
