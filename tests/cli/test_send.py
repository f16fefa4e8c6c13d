"""`send` against a real mosquitto with mutual TLS; an independent paho subscriber counts.

Things are created through `create --cert-mode ca` with the CA mosquitto trusts, so each
client proves its own identity.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.fixtures import Cli, assert_one_line_error, free_port
from support.mqtt import FixtureCA, Observer, start_mosquitto
from support.send import load, send, things_of
from support.wait import wait_until

from elf_async.local.mosquitto import Mosquitto


@pytest.mark.parametrize("qos", ["0", "1"])
def test_independent_subscriber_sees_exactly_what_was_published(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path, qos: str
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--rate", "20/s", "--duration", "2", "--qos", qos,
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    per_thing = {t["name"]: t for t in report["things"]}
    assert sorted(per_thing) == things_of(fleet)
    expected = sum(t["published"] for t in per_thing.values())
    watcher.settle(expected)
    counts = watcher.counts()
    for name, row in per_thing.items():
        assert row["scheduled"] == row["published"] == 40  # rate x duration
        assert counts.get(f"elf/{name}") == row["published"]
        docs = watcher.documents(f"elf/{name}")
        assert sorted(d["seq"] for d in docs) == list(range(40))
        assert {d["thing"] for d in docs} == {name}
        assert all(d["msg"] == "IoT ELF Hello" for d in docs)
    messages = report["messages"]
    assert messages["published"] == messages["scheduled"] == 120
    assert messages["failed"] == messages["unsent"] == 0
    if qos == "1":
        assert messages["acked"] == 120
        assert report["latency_ms"]["ack"]["count"] == 120
    assert report["connections"]["succeeded"] == 3
    assert len(report["series"]) >= 2
    for key in ("p50", "p90", "p99", "p999", "max"):
        assert key in report["latency_ms"]["lag"]


def test_quiet_prints_the_one_line_result_and_no_live_view(
    fleet: Cli, mosquitto: Mosquitto
) -> None:
    result = fleet(
        "-q", "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--count", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [result.stdout.strip()], result.stdout
    assert result.stdout.startswith("send passed: 6 of 6 messages acknowledged, "), result.stdout


def test_without_a_terminal_a_short_send_writes_its_summary_and_nothing_on_stderr(
    fleet: Cli, mosquitto: Mosquitto
) -> None:
    """No progress line lands on stderr (kept for errors) for a send shorter than the plain
    view's interval, which is a sign of life for CI logs."""
    result = send(fleet, mosquitto, "--rate", "2/s", "--duration", "6s")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("send passed: 36 of 36 messages acknowledged, "), result.stdout
    assert "  messages      36 scheduled, 36 published, 36 acknowledged" in lines
    assert lines[-1].startswith("next: --report FILE.json"), result.stdout


def _rogue_certificate(cli: Cli, name: str, rogue: FixtureCA) -> None:
    """Replace a thing's certificate with one for the same key from a CA the broker distrusts."""
    from elf_async.controlplane.certs import load_private_key, thing_files
    from elf_async.files import write_public

    key_file, cert_file = thing_files(cli.state_dir, name)
    write_public(cert_file, rogue.ca.sign(load_private_key(key_file).public_key(), name))


def test_a_certificate_from_another_ca_is_a_failed_connection_not_a_crash(
    fleet: Cli, mosquitto: Mosquitto, rogue_ca: FixtureCA, tmp_path: Path
) -> None:
    bad, *good = things_of(fleet)
    _rogue_certificate(fleet, bad, rogue_ca)
    report_file = tmp_path / "report.json"
    result = send(
        fleet, mosquitto, "--rate", "5/s", "--duration", "1", "--report", str(report_file)
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "elf-async: error: 1 things could not connect; 5 messages were due but not published"
    )
    report = load(report_file)
    rows = {t["name"]: t for t in report["things"]}
    assert "does not trust the CA" in rows[bad]["error"]
    assert rows[bad]["published"] == 0
    assert rows[bad]["scheduled"] == rows[bad]["unsent"] == 5  # it owes its whole schedule
    assert report["messages"]["unsent"] == 5
    assert all(rows[name]["published"] == rows[name]["acked"] == 5 for name in good)
    assert report["connections"]["things_failed"] == 1
    assert any("UNKNOWN_CA" in reason for reason in report["connections"]["errors"])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_things_that_cannot_connect_owe_their_whole_schedule(
    fleet: Cli, tmp_path: Path, workers: str
) -> None:
    """Nothing listens on the port: every thing owes every message, and the report says so
    (unsent == scheduled, achieved 0/s) instead of a send that planned nothing."""
    report_file = tmp_path / "report.json"
    result = fleet(
        "send", "--mqtt-endpoint", f"127.0.0.1:{free_port()}", "--rate", "5/s",
        "--duration", "1", "--connect-retries", "0", "--workers", workers,
        "--report", str(report_file), timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "elf-async: error: 3 things could not connect; 15 messages were due but not published"
    )
    report = load(report_file)
    messages = report["messages"]
    assert messages["scheduled"] == 15  # 3 things x 5/s x 1 s
    assert (messages["published"], messages["acked"], messages["failed"]) == (0, 0, 0)
    assert messages["unsent"] == messages["scheduled"]
    for row in report["things"]:
        assert (row["scheduled"], row["published"], row["unsent"]) == (5, 0, 5)
        assert "connection refused" in row["error"]
    assert report["connections"]["things_failed"] == 3
    assert report["rate"]["target_per_s"] == 15
    assert report["rate"]["achieved_per_s"] == 0


def test_broker_restart_mid_send_reconnects_and_loses_no_acknowledged_message(
    fleet: Cli, mosquitto: Mosquitto, test_ca: FixtureCA, observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:  # fmt: skip
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    process = fleet.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--rate", "10/s", "--duration", "6", "--drain", "10s",
        "--report", str(report_file),
    )  # fmt: skip
    things = things_of(fleet)
    try:
        wait_until(  # mid-send: every thing published through this broker
            lambda: all(watcher.counts().get(f"elf/{name}") for name in things),
            what="a message from every thing",
        )
        mosquitto.stop()  # returns once the process is gone: every connection is cut
        restarted = start_mosquitto(mosquitto.directory, test_ca, port=mosquitto.port)
        try:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
            report = load(report_file)
            assert report["connections"]["reconnects"] >= 3  # every thing got back
            assert (
                report["connections"]["reconnect_attempts"] >= report["connections"]["reconnects"]
            )
            assert all(row["error"] is None for row in report["things"])
            messages = report["messages"]
            assert messages["acked"] == messages["published"] == messages["scheduled"] == 180
            watcher.settle(180, timeout=20)
            for row in report["things"]:
                seqs = {d["seq"] for d in watcher.documents(f"elf/{row['name']}")}
                assert seqs == set(range(row["acked"]))  # duplicates allowed, loss not
        finally:
            restarted.stop()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


AWS_SDK = ("aioboto3", "aiobotocore", "botocore", "boto3")


def sdk_imports(importtime: str) -> list[str]:
    """The AWS SDK modules named in `python -X importtime` output."""
    return [
        line
        for line in importtime.splitlines()
        if line.startswith("import time:") and line.split("|")[-1].strip().split(".")[0] in AWS_SDK
    ]


def test_the_cli_imports_no_aws_sdk_until_it_calls_aws() -> None:
    """Importing aioboto3/botocore takes most of a second: only a control-plane call may."""
    probe = f"import sys, elf_async.cli; print([m for m in {AWS_SDK!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_send_to_a_given_endpoint_imports_no_aws_sdk(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A real send (its worker included) that needs no DescribeEndpoint never loads the SDK."""
    report_file = tmp_path / "report.json"
    result = fleet(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--count", "2", "--workers", "2", "--report", str(report_file),
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "import time:" in result.stderr  # the probe works
    assert sdk_imports(result.stderr) == []
    assert load(report_file)["messages"]["acked"] == 6


def test_sigint_mid_send_still_writes_a_valid_report(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path, observer: Callable[..., Observer]
) -> None:
    report_file = tmp_path / "report.json"
    watcher = observer("elf/#")
    process = fleet.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--rate", "10/s", "--duration", "60", "--report", str(report_file),
    )  # fmt: skip
    try:
        wait_until(lambda: bool(watcher.counts()), what="a message (mid-send, not mid-start)")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = load(report_file)
    assert report["outcome"] == "interrupted"
    messages = report["messages"]
    assert 0 < messages["published"] < 1800
    assert messages["acked"] == messages["published"]


def test_seed_compatibility(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer]
) -> None:
    watcher = observer("elf/#")
    result = send(
        fleet, mosquitto, "hi", "--topic", "elf", "--append-thing-name", "--duration", "3"
    )
    assert result.returncode == 0, result.stderr
    watcher.settle(9)
    for name in things_of(fleet):
        docs = watcher.documents(f"elf/{name}")
        assert len(docs) == 3  # one a second
        assert all(doc["msg"] == "hi" for doc in docs)


def test_every_bad_input_is_one_line_and_exit_2(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    big_json = tmp_path / "big.json"
    big_json.write_text(json.dumps({"msg": "x" * 130 * 1024}))
    cases = [
        (["--qos", "2"], "QoS 0 and 1"),
        (["--rate", "fast"], "--rate"),
        (["--rate", "101/s"], "100/s per connection"),
        (["--rate", "1/s", "--total-rate", "3/s"], "cannot be used together"),
        (["--duration", "-1"], "--duration"),
        (["--count", "3", "--duration", "2"], "cannot be used together"),
        (["--topic", "elf/+"], "wildcards"),
        (["--topic", "a/b/c/d/e/f/g/h/i"], "slashes"),
        (["--topic", "x" * 300], "bytes"),
        (["--topic", "elf/{nope}"], "unknown placeholder"),
        (["--json-message", str(tmp_path / "missing.json")], "no such file"),
        (["--json-message", str(bad_json)], "invalid JSON"),
        (["--payload-size", str(200 * 1024)], "--payload-size"),
        (["--payload-size", "10"], "--payload-size 10"),
        (["--json-message", str(big_json)], "128 KB"),
        (["--things", "4"], "the fleet has 3"),
        (["--things", "0"], "--things"),
        (["--max-inflight", "101"], "--max-inflight"),
        (["--connect-rate", "501/s"], "500"),
        (["--mqtt-endpoint", "host:99999"], "out of range"),
        (["--ca-file", str(tmp_path / "nope.pem")], "--ca-file"),
        (["--report", str(tmp_path / "no" / "dir.json")], "does not exist"),
        (["--report", str(tmp_path)], "is a directory"),
        (["--drain", "soon"], "--drain"),
        (["--topic", ""], "--topic must not be empty"),
        (["--topic", os.fsdecode(b"elf/\xff")], "--topic: not valid UTF-8 (byte 0xff"),
        ([os.fsdecode(b"hi \xff")], "MESSAGE: not valid UTF-8 (byte 0xff at character 4)"),
        (["--payload-template", "{unknown}"], "unknown field {unknown}"),
        (["--count", "99999999999999999999"], "a send lasts at most 7 days"),
        (["--total-rate", "3/s", "--count", "1000000000"], "at 1 messages/s per thing takes"),
        (["--duration", "169h"], "at most 168h (7 days)"),
    ]
    endpoint = f"127.0.0.1:{mosquitto.port}"
    with ThreadPoolExecutor(4) as pool:  # each run is a fresh interpreter: in parallel
        results = pool.map(
            lambda args: fleet("send", "--mqtt-endpoint", endpoint, *args, timeout=120),
            [args for args, _ in cases],
        )
        for result, (_, fragment) in zip(results, cases, strict=True):
            assert_one_line_error(result, 2, fragment)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full: a Linux device")
def test_a_report_that_cannot_be_written_at_the_end_is_kept_in_the_state_dir(
    fleet: Cli, mosquitto: Mosquitto
) -> None:
    """/dev/full passes the check before the run (an existing, writable file) and then fails
    every write with ENOSPC, a real full disk: the results are printed and kept, and the
    run exits 2 with one line saying where the report is."""
    result = send(fleet, mosquitto, "--count", "2", "--report", "/dev/full")
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)  # written in place, never replaced
    kept = list((fleet.state_dir / "reports").glob("send-*.json"))
    assert len(kept) == 1, kept
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("elf-async:")]
    assert errors == [
        f"elf-async: error: --report /dev/full: No space left on device; kept it in {kept[0]} "
        "instead"
    ]
    assert result.stdout.startswith("send passed: 6 of 6 messages acknowledged")  # printed anyway
    assert f"report: {kept[0]}" in result.stdout
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o644
    assert load(kept[0])["messages"]["acked"] == 6
