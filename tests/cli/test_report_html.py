"""`report html` and `--html` on send and subscribe, as a user runs them (subprocesses). What
the page shows is tested in tests/report/test_html.py; a browser draws it in
tests/report/test_html_browser.py (with `run --html`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.local import LocalCli
from support.report import embedded_report
from support.sample_reports import as_v2, run_report, send_report
from support.send import send

from elf_async.local.mosquitto import Mosquitto


@pytest.mark.parametrize("report", [run_report(**{"ack.p99<1ms": False}), as_v2(send_report())])
def test_report_html_writes_the_page(
    local_cli: LocalCli, tmp_path: Path, report: dict[str, Any]
) -> None:
    source, page = tmp_path / "r.json", tmp_path / "r.html"
    source.write_text(json.dumps(report))
    result = local_cli("report", "html", str(source), "-o", str(page))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {page}\n"
    assert embedded_report(page) == report
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_report_html_bad_input_is_one_line_and_exit_2(local_cli: LocalCli, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(send_report()))
    incomplete = send_report()
    del incomplete["rate"]
    files = {
        "other.json": '{"metrics": {}}',
        "future.json": json.dumps({**send_report(), "schema": "elf-async/report/3"}),
        "broken.json": '{"schema": ',
        "incomplete.json": json.dumps(incomplete),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = str(tmp_path / "out.html")
    cases = [
        (["other.json", "-o", out], "other.json: not an elf-async report (it has no schema field)"),
        (["future.json", "-o", out], "schema 'elf-async/report/3' is unknown to elf-async"),
        (["broken.json", "-o", out], "broken.json: not JSON"),
        (["incomplete.json", "-o", out], "not a well-formed elf-async/report/1 report (no 'rate')"),
        (["missing.json", "-o", out], "missing.json: cannot read it: No such file or directory"),
        ([".", "-o", out], ": cannot read it: Is a directory"),
        (["good.json", "-o", str(tmp_path / "no" / "x.html")], "the directory"),
        (["good.json", "-o", str(tmp_path)], f"-o {tmp_path}: is a directory"),
        (["good.json"], "Missing option '-o' / '--output'"),
    ]
    for args, fragment in cases:
        paths = [str(tmp_path / a) if a.endswith(".json") or a == "." else a for a in args]
        assert_one_line_error(local_cli("report", "html", *paths), 2, fragment)
    assert not (tmp_path / "out.html").exists()


def test_send_and_its_html_page(fleet: Cli, mosquitto: Mosquitto, tmp_path: Path) -> None:
    report, page = tmp_path / "send.json", tmp_path / "send.html"
    result = send(fleet, mosquitto, "--count", "2", "--report", str(report), "--html", str(page))
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    assert document["options"]["html"] == str(page)
    assert embedded_report(page) == document
    assert "send passed: 6 of 6 messages acknowledged" in page.read_text()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_subscribe_html_kept_in_the_state_dir_when_the_disk_is_full(
    fleet: Cli, mosquitto: Mosquitto
) -> None:
    """/dev/full passes the check before the run and fails the write after it, as a disk that
    filled up while the run lasted: the page is kept in the state dir, as a report would be."""
    result = fleet(
        "subscribe", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--duration", "1", "-q", "--html", "/dev/full", timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (kept,) = (fleet.state_dir / "reports").glob("subscribe-*.html")
    assert f"--html /dev/full: No space left on device; kept it in {kept} instead" in result.stderr
    assert embedded_report(kept)["command"] == "subscribe"


def test_an_unwritable_html_path_stops_send_before_it_starts(fleet: Cli, tmp_path: Path) -> None:
    result = fleet("send", "--html", str(tmp_path / "no" / "send.html"), timeout=60)
    assert_one_line_error(result, 2, f"--html {tmp_path / 'no' / 'send.html'}: the directory")
