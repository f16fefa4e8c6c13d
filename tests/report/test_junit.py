"""JUnit XML: one case for the run, one per threshold, failures where they failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from elf_async.report.junit import junit_xml, write_junit
from elf_async.report.thresholds import evaluate, parse_all

REPORT = {
    "messages": {"qos": 1, "scheduled": 100, "acked": 100},
    "latency_ms": {"ack": {"p99": 20.0}},
}


def _cases(document: bytes) -> dict[str, ET.Element]:
    root = ET.fromstring(document)
    return {case.attrib["name"]: case for case in root.iter("testcase")}


def test_passing_and_failing_thresholds(tmp_path: Path) -> None:
    verdicts = evaluate(parse_all(["ack.p99<250ms", "ack.p99<5ms", "error_rate==0"]), REPORT)
    document = junit_xml(name="run 10", verdicts=verdicts, run_error=None, duration_s=1.5)
    path = tmp_path / "out" / "junit.xml"
    write_junit(path, document)
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.attrib["tests"], suite.attrib["failures"], suite.attrib["skipped"]) == (
        "4",
        "1",
        "0",
    )
    cases = _cases(path.read_bytes())
    assert set(cases) == {"run 10", "ack.p99<250ms", "ack.p99<5ms", "error_rate==0"}
    assert cases["run 10"].find("failure") is None
    assert cases["ack.p99<250ms"].find("failure") is None
    failure = cases["ack.p99<5ms"].find("failure")
    assert failure is not None
    assert "20 ms" in failure.attrib["message"]


def test_failed_run_fails_its_case_and_skips_thresholds_without_data() -> None:
    verdicts = evaluate(parse_all(["ack.p99<250ms"]), {})
    document = junit_xml(
        name="run 10", verdicts=verdicts, run_error="create failed: AccessDenied", duration_s=0.2
    )
    cases = _cases(document)
    failure = cases["run 10"].find("failure")
    assert failure is not None
    assert failure.attrib["message"] == "create failed: AccessDenied"
    assert cases["ack.p99<250ms"].find("skipped") is not None
    suite = ET.fromstring(document).find("testsuite")
    assert suite is not None
    assert (suite.attrib["failures"], suite.attrib["skipped"]) == ("1", "1")
