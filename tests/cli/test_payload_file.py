"""`send --payload-file`: recorded messages replayed exactly and in order, per thing or round
robin, as an independent subscriber receives them; a bad line is named before any connect."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.mqtt import Observer
from support.send import load, send

from elf_async.dataplane.payload import MAX_PAYLOAD_BYTES
from elf_async.local.mosquitto import Mosquitto

LINES = [json.dumps({"reading": i, "unit": "C"}, separators=(",", ":")) for i in range(5)]


def recorded(tmp_path: Path) -> Path:
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(line + "\n" for line in LINES))
    return path


@pytest.mark.parametrize("qos", ["0", "1"])
def test_each_thing_replays_the_lines_in_order(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path, qos: str
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--payload-file", str(recorded(tmp_path)), "--count", "7",
                  "--rate", "20/s", "--qos", qos, "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    watcher.settle(21)
    expected = [LINES[k % 5].encode() for k in range(7)]  # again from the top once done
    for thing in report["things"]:
        assert watcher.messages[thing["topic"]] == expected


def test_round_robin_shares_the_lines_between_the_things(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    """Thing p of 3 sends lines p, p + 3, p + 6... (mod 5): together, the file in order."""
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--payload-file", str(recorded(tmp_path)),
                  "--payload-order", "round-robin", "--count", "4", "--rate", "20/s",
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    watcher.settle(12)
    things = load(report_file)["things"]
    for p, thing in enumerate(things):
        assert watcher.messages[thing["topic"]] == [
            LINES[(p + k * 3) % 5].encode() for k in range(4)
        ]
    rounds = [watcher.messages[t["topic"]][k] for k in range(4) for t in things]
    assert rounds == [LINES[n % 5].encode() for n in range(12)]


def test_stamped_lines_carry_thing_seq_and_ts(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--payload-file", str(recorded(tmp_path)), "--stamp",
                  "--count", "2", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    watcher.settle(6)
    thing = load(report_file)["things"][0]
    docs = watcher.documents(thing["topic"])
    assert [(d["reading"], d["thing"], d["seq"]) for d in docs] == [
        (0, thing["name"], 0), (1, thing["name"], 1)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"a": 1}\n' + json.dumps({"pad": "x" * MAX_PAYLOAD_BYTES}) + "\n",
         "recorded.jsonl:2: a message of 131083 bytes: AWS IoT allows 131072 (128 KB)"),
        ('{"a": 1}\n{"a": 2}\nnot json\n', "recorded.jsonl:3: not JSON at column 1"),
    ],
)  # fmt: skip
def test_a_bad_line_exits_2_naming_it_before_any_connect(
    cli: Cli, tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "recorded.jsonl"
    path.write_text(content)
    result = cli("send", "--payload-file", str(path))
    assert_one_line_error(result, 2, f"--payload-file {tmp_path}/{fragment}")


def test_payload_file_excludes_the_other_payloads(cli: Cli, tmp_path: Path) -> None:
    result = cli("send", "hello", "--payload-file", str(recorded(tmp_path)))
    assert_one_line_error(result, 2, "MESSAGE and --payload-file cannot be used together")
    result = cli("send", "--payload-order", "round-robin")
    assert_one_line_error(result, 2, "--payload-order needs --payload-file")
