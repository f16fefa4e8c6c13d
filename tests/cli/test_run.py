"""`run`: create → send → clean against the local stack, as a CI job calls it (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import assert_one_line_error, free_port, iot_client
from support.local import LocalCli, alive, children, processes_under, reaping
from support.report import assert_conforms
from support.wait import wait_for_log, wait_until

from elf_async.report.model import RunReport

SEND = ("--rate", "2/s", "--duration", "2s", "--qos", "1")


def assert_nothing_left(iot: Any) -> None:
    """Plain boto3: no thing, certificate or policy survived the run."""
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def _junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.attrib["name"]: case for case in ET.parse(path).getroot().iter("testcase")}


def test_run_local_passes_reports_and_leaves_nothing(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = local_cli(
        "--local", "run", "3", *SEND, "--report", str(report), "--junit", str(junit),
        "--threshold", "connections.failed==0", "--threshold", "error_rate<1%",
        "--threshold", "messages.acked>=1", "--max-inflight", "7", "--no-stamp",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    assert (document["options"]["max_inflight"], document["options"]["stamp"]) == (7, False)
    assert document["schema"] == "elf-async/report/2"
    assert_conforms(document, RunReport)
    assert document["messages"]["published"] == document["messages"]["scheduled"] > 0
    assert document["connections"]["succeeded"] == 3
    assert [t["ok"] for t in document["thresholds"]] == [True, True, True]
    assert document["run"]["exit_code"] == 0
    cases = _junit_cases(junit)
    assert len(cases) == 4
    assert all(case.find("failure") is None for case in cases.values())
    assert_nothing_left(iot_client(stack["endpoint_url"]))
    assert local_cli.stack() == stack  # a stack the run did not start is left running
    assert not (local_cli.state_dir / "ledger.sqlite3").exists()


def test_failing_threshold_exits_3_with_a_junit_failure(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    junit = tmp_path / "junit.xml"
    result = local_cli(
        "--local", "run", "2", *SEND, "--junit", str(junit),
        "--threshold", "messages.acked>=1000000", "--threshold", "connections.failed==0",
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "messages.acked>=1000000" in result.stderr
    cases = _junit_cases(junit)
    assert cases["messages.acked>=1000000"].find("failure") is not None
    assert cases["connections.failed==0"].find("failure") is None
    assert cases["run 2"].find("failure") is None
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_run_on_a_terminal_shows_the_send_phase_live_and_ends_on_the_final_figures(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    code, text = local_cli.on_terminal(
        "--local", "run", "2", "--rate", "2/s", "--duration", "4s", "--report", str(report)
    )
    assert code == 0, text
    messages = json.loads(report.read_text())["messages"]
    phases = re.findall(r"^ *phase +(\w+) *$", text, re.MULTILINE)
    published = re.findall(r"^ *published +(\d+)/(\d+) due *$", text, re.MULTILINE)
    assert "sending" in phases, text
    assert phases[-1] == "done", text
    assert published[-1] == (str(messages["published"]), str(messages["scheduled"])), text
    assert re.search(r"^ *time +\d+s elapsed, \d+s left *$", text, re.MULTILINE), text
    assert "━" in text  # the phase's progress bar
    verdict = re.search(r"^run passed: (\d+) of (\d+) messages acknowledged", text, re.MULTILINE)
    assert verdict is not None, text
    assert verdict.start() > text.rindex("phase ")  # the summary comes after the live view
    assert verdict.groups() == (str(messages["acked"]), str(messages["scheduled"]))
    assert f"\nreport: {report}\n" in text[verdict.start() :]


def test_run_local_starts_and_stops_an_ephemeral_stack(local_cli: LocalCli, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = local_cli("run", "2", "--local", *SEND, "--report", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # without a terminal, a short run shows no progress lines
    assert result.stdout.splitlines()[2].startswith("run passed: "), result.stdout
    assert json.loads(report.read_text())["messages"]["acked"] > 0
    assert local_cli.stack() is None
    assert processes_under(tmp_path) == set()


def test_bad_threshold_is_a_usage_error_before_anything_starts(
    local_cli: LocalCli, tmp_path: Path
) -> None:
    result = local_cli("run", "2", "--local", "--threshold", "ack.p99<fast")
    assert_one_line_error(result, 2, "ack.p99<fast")
    assert local_cli.stack() is None
    assert processes_under(tmp_path) == set()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rate", "fast"], "--rate: 'fast' is not a rate"),
        (["--junit", "."], "--junit .: is a directory"),
        (["--report", "no/such/dir/r.json"], "--report no/such/dir/r.json: the directory no/"),
        (["--count", "99999999999999999999"], "a send lasts at most 7 days"),
        (["--total-rate", "300/s"], "150 messages/s per thing: AWS IoT drops publishes"),
        (["--topic", ""], "--topic must not be empty"),
    ],
)
def test_a_bad_send_option_is_a_usage_error_before_anything_starts(
    local_cli: LocalCli, tmp_path: Path, args: list[str], fragment: str
) -> None:
    """Send's options and the output paths are checked with create's, where they are parsed:
    a run that could never send, or never write its results, starts no stack and creates
    nothing (the JUnit file used to fail only after create, send and clean)."""
    result = local_cli("run", "2", "--local", *args)
    assert_one_line_error(result, 2, fragment)
    assert not (local_cli.state_dir / "local").exists()  # no stack was ever started
    assert processes_under(tmp_path) == set()


def _wait_for_clients(state_dir: Path, count: int) -> None:
    """Until mosquitto's log shows `count` clients connected (the send phase runs)."""
    wait_for_log(
        state_dir / "local" / "mosquitto" / "mosquitto.log",
        "New client connected",
        count=count,
        timeout=120,
    )


def test_sigterm_mid_run_still_cleans_up(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    process = local_cli.popen(
        "--local", "run", "3", "--rate", "1/s", "--duration", "10m", "--qos", "1",
        "--report", str(report),
    )  # fmt: skip
    try:
        _wait_for_clients(local_cli.state_dir, 3)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert json.loads(report.read_text())["run"]["exit_code"] == 143
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_second_ctrl_c_aborts_and_prints_the_clean_command(
    local_cli: LocalCli, stack: dict[str, Any]
) -> None:
    process = local_cli.popen(
        "--local", "run", "5", "--rate", "1/s", "--duration", "10m", "--qos", "1"
    )
    try:
        _wait_for_clients(local_cli.state_dir, 5)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # the first Ctrl-C is taken: the second one aborts
            seen.append(line)
            if "Ctrl-C again aborts" in line:
                break
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stderr
    command = stderr.split("finish it later with: ", 1)[1].strip().splitlines()[0]
    assert command == f"elf-async --state-dir {local_cli.state_dir} --local clean"
    cleaned = local_cli("--local", "clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_a_lost_worker_fails_the_run_even_when_the_thresholds_pass(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    """A worker killed mid-send leaves its things uncounted: CI must not see a pass."""
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    process = local_cli.popen(
        "--local", "run", "4", "--workers", "2", "--rate", "5/s", "--duration", "8s",
        "--qos", "1", "--threshold", "messages.acked>=1", "--report", str(report),
        "--junit", str(junit),
    )  # fmt: skip
    with reaping(process) as workers:
        _wait_for_clients(local_cli.state_dir, 4)  # both workers are sending
        workers |= {
            pid
            for pid in children(process.pid)
            if b"elf_async.jobs._worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        }
        assert len(workers) == 2
        os.kill(min(workers), signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert re.fullmatch(
        r"elf-async: error: the measurement is incomplete: worker [12] of 2 exited with code -9 "
        r"before its report: its 2 things are not counted",
        stderr.splitlines()[-1],
    ), stderr
    document = json.loads(report.read_text())
    assert_conforms(document, RunReport)
    assert len(document["workers"]["lost"]) == 1
    assert [t["ok"] for t in document["thresholds"]] == [True]  # thresholds alone would pass
    assert document["run"]["exit_code"] == 1
    assert "the measurement is incomplete" in document["run"]["failure"]
    cases = _junit_cases(junit)
    failure = cases["run 4"].find("failure")
    assert failure is not None
    assert "exited with code -9" in failure.attrib["message"]
    assert cases["messages.acked>=1"].find("failure") is None
    assert_nothing_left(iot_client(stack["endpoint_url"]))  # still cleaned up
    assert not [pid for pid in workers if alive(pid)]


def test_a_run_whose_things_cannot_connect_fails_and_owes_every_message(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    """Nothing listens on the MQTT port: no message is sent, so the run fails (exit 1, not
    the 3 of its failed threshold), every message is owed, and the fleet is still cleaned."""
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = local_cli(
        "--local", "run", "3", "--rate", "2/s", "--duration", "2s", "--qos", "1",
        "--mqtt-endpoint", f"127.0.0.1:{free_port()}", "--connect-retries", "0",
        "--threshold", "achieved_rate>=99%", "--threshold", "connections.attempted>=3",
        "--report", str(report), "--junit", str(junit),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    problems = "3 things could not connect; 12 messages were due but not published"
    assert result.stderr.splitlines()[-1] == f"elf-async: error: {problems}"
    assert f"run failed: send failed: {problems}" in result.stdout
    document = json.loads(report.read_text())
    messages = document["messages"]
    assert messages["scheduled"] == 12  # 3 things x 2/s x 2 s: the whole schedule is owed
    assert (messages["published"], messages["acked"], messages["failed"]) == (0, 0, 0)
    assert messages["unsent"] == messages["scheduled"]
    assert [(t["scheduled"], t["unsent"]) for t in document["things"]] == [(4, 4)] * 3
    assert document["connections"]["things_failed"] == 3
    assert document["rate"]["achieved_per_s"] == 0
    assert [t["ok"] for t in document["thresholds"]] == [False, True]
    assert document["run"]["exit_code"] == 1
    assert document["run"]["failure"] == f"send failed: {problems}"
    assert document["run"]["cleaned"] is True
    cases = _junit_cases(junit)
    failure = cases["run 3"].find("failure")
    assert failure is not None
    assert failure.attrib["message"] == f"send failed: {problems}"
    assert cases["achieved_rate>=99%"].find("failure") is not None
    assert cases["connections.attempted>=3"].find("failure") is None
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_run_serves_live_metrics_and_cross_checks_cloudwatch(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    """`run --metrics-port` serves the send phase as `run`, ending on the report's figures;
    `--cloudwatch` on the local stack reads moto's CloudWatch at once (nothing to wait for)."""
    port, report = free_port(), tmp_path / "report.json"
    process = local_cli.popen(
        "--local", "run", "3", *SEND, "--metrics-port", str(port), "--metrics-linger", "10m",
        "--cloudwatch", "--report", str(report),
    )  # fmt: skip
    try:
        wait_until(report.exists, what="the report")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, stderr
    document = json.loads(report.read_text())
    assert_conforms(document, RunReport)
    labels = f'command="run",fleet="{document["run"]["fleet_id"]}",shard=""'
    assert f"elf_messages_acked_total{{{labels}}} {document['messages']['acked']:.1f}" in text
    aws = document["aws_metrics"]
    assert aws["waited_s"] == 0  # --local: moto's CloudWatch has nothing to wait for
    assert aws["publish_in_success"]["client"] == document["messages"]["published"]
    assert aws["error"] is None
