"""`report merge` and `report compare` through the CLI: two real sends merged exactly, exit
codes, and every bad input one line with exit 2."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import FixtureCA
from support.report import assert_conforms, embedded_report, sent_report
from support.send import load

from elf_async.local.mosquitto import Mosquitto
from elf_async.metrics import Histogram
from elf_async.report.document import latency
from elf_async.report.model import SendReport

FAST = [[0.001, 0.002, 0.003], [0.002, 0.004]]
SLOW = [[0.050, 0.120], [0.080, 0.300, 0.400, 0.500]]


def _write(path: Path, report: dict[str, Any]) -> str:
    path.write_text(json.dumps(report))
    return str(path)


def _fleet(cli: Cli, test_ca: FixtureCA, prefix: str) -> None:
    result = cli(
        "create", "2", "--prefix", prefix, "--cert-mode", "ca", "--ca-cert",
        str(test_ca.cert_file), "--ca-key", str(test_ca.key_file), "--key-type", "ec",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_two_real_sends_merge_exactly(
    cli: Cli, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two sends on disjoint things with one schedule, side by side, stand in for two shards
    (the shards' own --shard option is another part's): counts, histograms and seconds add up."""
    other = Cli(state_dir=tmp_path / "state-b", endpoint_url=cli.endpoint_url)
    _fleet(cli, test_ca, "shard-a")
    _fleet(other, test_ca, "shard-b")
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    endpoint = [
        "--mqtt-endpoint",
        f"127.0.0.1:{mosquitto.port}",
        "--ca-file",
        str(mosquitto.ca_file),
    ]
    sends = [
        c.popen("send", *endpoint, "--rate", "10/s", "--duration", "3", "--report", str(f))
        for c, f in zip((cli, other), files, strict=True)
    ]
    for process in sends:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    a, b = (load(f) for f in files)
    # One fleet split in two: relabel the second fleet's id as the first's, and say which shard.
    b["fleet"]["fleet_id"] = a["fleet"]["fleet_id"]
    a["shard"], b["shard"] = {"index": 0, "count": 2}, {"index": 1, "count": 2}
    merged_file = tmp_path / "merged.json"
    result = cli(
        "report", "merge", _write(files[0], a), _write(files[1], b), "-o", str(merged_file),
        "--threshold", "messages.acked>=120", "--junit", str(tmp_path / "junit.xml"),
        "--html", str(tmp_path / "merged.html"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("merge passed: 120 of 120 messages acknowledged")
    merged = json.loads(merged_file.read_text())
    assert_conforms(merged, SendReport)
    assert merged["shards"] == {"count": 2, "merged": 2, "missing": 0}
    assert embedded_report(tmp_path / "merged.html") == merged
    for name in ("scheduled", "published", "acked"):
        assert merged["messages"][name] == a["messages"][name] + b["messages"][name] == 120
    assert len(merged["things"]) == 4
    for name in ("ack", "lag", "connect"):
        encodings = [r["histograms"][name].encode() for r in (a, b)]
        both = Histogram.decode(*encodings)
        assert merged["latency_ms"][name] == latency(both)
        assert merged["latency_ms"][name]["count"] == sum(
            r["latency_ms"][name]["count"] for r in (a, b)
        )
    for column in ("published", "acked"):
        assert sum(row[column] for row in merged["series"]) == 120
    for row, second in zip(merged["series"], merged["histograms"]["seconds"], strict=True):
        acks = Histogram.decode(second["ack"].encode()) if second["ack"] else Histogram()
        assert acks.count == row["acked"]
        assert row["ack_p99_ms"] == acks.percentile_ms(99)
    suite = ET.parse(tmp_path / "junit.xml").getroot()[0]
    assert suite.get("tests") == "2"
    assert suite.get("failures") == "0"


def test_a_missing_shard_exits_1_even_when_every_threshold_holds(cli: Cli, tmp_path: Path) -> None:
    shard = _write(tmp_path / "a.json", sent_report(seconds=FAST, shard=(0, 2)))
    result = cli(
        "report", "merge", shard, "-o", str(tmp_path / "m.json"), "--threshold", "ack.p99<1s"
    )
    assert result.returncode == 1, result.stderr
    assert "1 of 2 shards are missing" in result.stdout
    assert json.loads((tmp_path / "m.json").read_text())["shards"]["missing"] == 1


def test_a_failed_threshold_on_the_merged_report_exits_3(cli: Cli, tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", sent_report(seconds=FAST))
    b = _write(tmp_path / "b.json", sent_report(seconds=SLOW, names=("elf-2",)))
    result = cli(
        "report", "merge", a, b, "-o", str(tmp_path / "m.json"), "--threshold", "ack.p99<10ms"
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("merge failed: 1 of 1 thresholds failed: ack.p99<10ms")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not JSON"),
        ('{"hello": 1}', "not an elf-async report"),
        ('{"schema": "elf-async/report/7"}', "is unknown to elf-async"),
    ],
)
def test_bad_input_to_merge_is_one_line_and_exit_2(
    cli: Cli, tmp_path: Path, content: str, fragment: str
) -> None:
    good = _write(tmp_path / "a.json", sent_report(seconds=FAST))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = cli("report", "merge", good, str(bad), "-o", str(tmp_path / "m.json"))
    assert_one_line_error(result, 2, str(bad), fragment)


def test_merge_refuses_a_duplicate_shard_an_unreadable_file_and_a_bad_output(
    cli: Cli, tmp_path: Path
) -> None:
    a = _write(tmp_path / "a.json", sent_report(seconds=FAST, shard=(0, 2)))
    b = _write(tmp_path / "b.json", sent_report(seconds=SLOW, shard=(0, 2)))
    out = str(tmp_path / "m.json")
    assert_one_line_error(cli("report", "merge", a, b, "-o", out), 2, "shard 0 is also")
    missing = str(tmp_path / "nope.json")
    assert_one_line_error(cli("report", "merge", a, missing, "-o", out), 2, "cannot read it")
    assert_one_line_error(
        cli("report", "merge", a, "-o", str(tmp_path / "no" / "m.json")), 2, "--output"
    )


def test_compare_exits_3_on_a_regression_and_0_on_an_equal_report(cli: Cli, tmp_path: Path) -> None:
    base = _write(tmp_path / "base.json", sent_report(seconds=FAST))
    same = cli("report", "compare", base, base)
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("compare passed: no metric regressed beyond 10%")
    assert "ack p99" in same.stdout
    slow = _write(tmp_path / "slow.json", sent_report(seconds=SLOW))
    page = tmp_path / "compare.html"
    worse = cli("report", "compare", base, slow, "--max-regression", "50%", "--html", str(page))
    assert worse.returncode == 3, worse.stderr
    assert worse.stdout.startswith("compare failed: ")
    assert "REGRESSED" in worse.stdout
    assert embedded_report(page) == {"base": json.loads(Path(base).read_text()),
                                     "new": json.loads(Path(slow).read_text())}  # fmt: skip
    assert "REGRESSED" in page.read_text()


def test_bad_input_to_compare_is_one_line_and_exit_2(cli: Cli, tmp_path: Path) -> None:
    base = _write(tmp_path / "base.json", sent_report(seconds=FAST))
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert_one_line_error(cli("report", "compare", base, str(bad)), 2, "not an elf-async report")
    assert_one_line_error(
        cli("report", "compare", base, base, "--max-regression", "lots"), 2, "--max-regression"
    )
    unwritable = str(tmp_path / "no" / "c.html")
    assert_one_line_error(cli("report", "compare", base, base, "--html", unwritable), 2, "--html")
