"""`--junit FILE.xml`: the run and each threshold as JUnit test cases, which CI systems show."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from elf_async.files import write_public
from elf_async.report.thresholds import Verdict

SUITE = "elf-async"


def junit_xml(
    *,
    name: str,
    verdicts: Sequence[Verdict],
    run_error: str | None,
    duration_s: float,
    summary: str = "",
) -> bytes:
    """One test case for the run itself (failed when `run_error` says why), one per threshold.

    Thresholds that could not be checked because the run produced no report are skipped:
    the run's own failure already says what went wrong.
    """
    skipped = [v for v in verdicts if v.value is None and run_error]
    failed = [v for v in verdicts if not v.ok and v not in skipped]
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=SUITE,
        tests=str(1 + len(verdicts)),
        failures=str(len(failed) + (1 if run_error else 0)),
        errors="0",
        skipped=str(len(skipped)),
        time=f"{duration_s:.3f}",
    )
    run_case = ET.SubElement(
        suite, "testcase", classname=f"{SUITE}.run", name=name, time=f"{duration_s:.3f}"
    )
    if run_error:
        ET.SubElement(run_case, "failure", message=run_error, type="RunFailed").text = run_error
    if summary:
        ET.SubElement(run_case, "system-out").text = summary
    for verdict in verdicts:
        case = ET.SubElement(
            suite, "testcase", classname=f"{SUITE}.threshold", name=verdict.threshold.expr
        )
        text = verdict.describe()
        if verdict in skipped:
            ET.SubElement(case, "skipped", message="the run produced no data for it")
        elif verdict in failed:
            ET.SubElement(case, "failure", message=text, type="ThresholdFailed").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suites)
    document: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def write_junit(path: Path, document: bytes) -> None:
    """Write atomically, so a CI step never reads half a file."""
    write_public(path, document.decode())
