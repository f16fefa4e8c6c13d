"""Sharded runs through the real CLI: shards given by an array job's environment (Kubernetes
Indexed Job), each in its own state dir against one moto and one mosquitto, one fleet id, one
--start-at; their reports merged (`report merge`) are one fleet-wide schedule, and
`clean --fleet ID` from one state dir finds every shard's things."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, MotoServer, assert_one_line_error
from support.local import finished
from support.mqtt import FixtureCA
from support.send import load

from elf_async.dataplane.schedule import plan
from elf_async.local.mosquitto import Mosquitto
from elf_async.metrics import row_seconds

FLEET_ID = "shard001"
FLEET = 9
SHARDS = 3
RATE = 5.0  # messages/s per thing: 45/s fleet-wide
DURATION = 4
# Time for three processes to start and connect before the shared instant; one that is late
# still sends everything (caught up), but the per-second evenness below assumes none is.
LEAD_S = 25


def shard_cli(moto: MotoServer, tmp_path: Path, index: int) -> Cli:
    return Cli(state_dir=tmp_path / f"shard-{index}", endpoint_url=moto.url)


def array_env(index: int) -> dict[str, str]:
    """What a Kubernetes Indexed Job gives each pod (plus the count it does not)."""
    return {"JOB_COMPLETION_INDEX": str(index), "ELF_SHARD_COUNT": str(SHARDS)}


def in_parallel(
    clis: list[Cli], *args: str, extra: list[list[str]] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """The same command in every shard's state dir, all running at once."""
    processes = [
        cli.popen(*args, *(extra[i] if extra else []), env=array_env(i))
        for i, cli in enumerate(clis)
    ]
    return finished(processes)


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def by_second(report: dict[str, Any], start_at: float, field: str) -> dict[int, int]:
    """A report's series over absolute time: each row counts in the second (relative to the
    shared start instant) it closes."""
    origin = epoch(report["started_at"])
    rows = report["series"]
    closes = row_seconds(origin + row["t"] - start_at for row in rows)
    total: Counter[int] = Counter()
    for second, row in zip(closes, rows, strict=True):
        total[second] += row[field]
    return dict(total)


def planned_by_second() -> dict[int, int]:
    """The single-process plan of the whole fleet: messages due in each second (s - 1, s]."""
    due: Counter[int] = Counter()
    for schedule in plan(FLEET, RATE, duration=DURATION):
        for seq in range(schedule.total):
            due[math.ceil(schedule.due(seq) - 1e-9)] += 1
    return dict(due)


def fleet_things(iot: Any) -> list[str]:
    things = iot.list_things(attributeName="elf_fleet", attributeValue=FLEET_ID)["things"]
    return sorted(t["thingName"] for t in things)


def test_three_indexed_shards_make_one_fleet_and_one_schedule(
    moto: MotoServer, iot: Any, test_ca: FixtureCA, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    clis = [shard_cli(moto, tmp_path, i) for i in range(SHARDS)]
    created = in_parallel(
        clis, "create", str(FLEET), "--fleet-id", FLEET_ID, "--cert-mode", "ca", "--ca-cert",
        str(test_ca.cert_file), "--ca-key", str(test_ca.key_file), "--key-type", "ec", "--json",
    )  # fmt: skip
    for result in created:
        assert result.returncode == 0, result.stderr
    names = [f"elf-{FLEET_ID}-{i:05d}" for i in range(FLEET)]
    assert fleet_things(iot) == names  # no overlap, no gap
    assert sorted(json.loads(r.stdout)["created"] for r in created) == [3, 3, 3]

    start_at = int(time.time()) + LEAD_S  # a whole second: the origins are exact
    reports = [tmp_path / f"report-{i}.json" for i in range(SHARDS)]
    sent = in_parallel(
        clis, "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--rate", f"{RATE:g}/s", "--duration", str(DURATION),
        "--start-at", str(start_at),
        # The last shard runs two worker processes: GO at the shared instant for them too.
        extra=[["--report", str(path)] + (["--workers", "2"] if i == 2 else [])
               for i, path in enumerate(reports)],
    )  # fmt: skip
    for result in sent:
        assert result.returncode == 0, result.stderr
    documents = [load(path) for path in reports]
    for index, document in enumerate(documents):
        assert document["shard"] == {"index": index, "count": SHARDS}
        assert epoch(document["start"]["at"]) == start_at
        assert document["start"]["late_start_s"] == 0, "a shard was not ready in time"
        assert [t["name"] for t in document["things"]] == names[index * 3 : index * 3 + 3]
        assert document["messages"]["acked"] == document["messages"]["scheduled"] == 60

    merged_file = clis[0].state_dir.parent / "merged.json"
    merged = clis[0]("report", "merge", *map(str, reports), "-o", str(merged_file))
    assert merged.returncode == 0, merged.stdout + merged.stderr
    document = load(merged_file)
    assert document["shards"] == {"count": SHARDS, "merged": SHARDS, "missing": 0}
    scheduled = by_second(document, start_at, "scheduled")
    expected = planned_by_second()
    assert sum(scheduled.values()) == sum(expected.values()) == FLEET * RATE * DURATION
    for second in range(2, DURATION + 1):  # after the first second: 45 each, not bursts
        assert abs(scheduled.get(second, 0) - expected[second]) <= 1, (second, scheduled)
    assert max(scheduled.values()) <= FLEET * RATE + 1

    cleaned = clis[0]("clean", "--fleet", FLEET_ID, "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["removed"] == FLEET
    assert fleet_things(iot) == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def test_a_shard_cleans_its_slice_and_leaves_the_shared_policy_to_the_last(
    moto: MotoServer, iot: Any, test_ca: FixtureCA, tmp_path: Path
) -> None:
    clis = [shard_cli(moto, tmp_path, i) for i in range(2)]
    for index, cli in enumerate(clis):
        result = cli(
            "create", "4", "--shard", f"{index}/2", "--run-id", "ci-1234", "--cert-mode", "ca",
            "--ca-cert", str(test_ca.cert_file), "--ca-key", str(test_ca.key_file),
            "--key-type", "ec",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    things = iot.list_things()["things"]
    assert len(things) == 4
    fleet_id = things[0]["attributes"]["elf_fleet"]
    assert {t["attributes"]["elf_fleet"] for t in things} == {fleet_id}  # one fleet

    first = clis[0]("clean", "--shard", "0/2")
    assert first.returncode == 0, first.stderr
    assert "left the policy" in first.stdout
    left = sorted(t["thingName"] for t in iot.list_things()["things"])
    assert left == [f"elf-{fleet_id}-00002", f"elf-{fleet_id}-00003"]  # shard 1's, untouched
    assert len(iot.list_policies()["policies"]) == 1

    last = clis[1]("clean")  # the shard recorded in its state dir
    assert last.returncode == 0, last.stderr
    assert iot.list_things()["things"] == []
    assert iot.list_policies()["policies"] == []
    assert iot.list_certificates()["certificates"] == []


def test_a_late_shard_catches_up_with_its_lag_measured(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A --start-at passed by less than the tolerance: the shard starts at once, owes what
    fell due since the instant, and sends it all late."""
    report_file = tmp_path / "late.json"
    # The instant has passed when the process reads it; a process that took more than the
    # tolerance to start (a loaded machine) is refused, so that case is tried again.
    for _ in range(3):
        start_at = time.time() - 0.2
        result = fleet(
            "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
            str(mosquitto.ca_file), "--rate", "10/s", "--duration", "3",
            "--start-at", f"{start_at:.3f}", "--report", str(report_file),
        )  # fmt: skip
        if not (result.returncode == 2 and "in the past" in result.stderr):
            break
    else:
        pytest.fail(f"the process took over the tolerance to start, 3 times: {result.stderr}")
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["start"]["late_start_s"] > 0
    assert "shard" not in report
    messages = report["messages"]
    assert messages["scheduled"] == messages["published"] == messages["acked"] == 90
    assert messages["unsent"] == 0
    late_ms = report["start"]["late_start_s"] * 1000
    assert report["latency_ms"]["lag"]["max"] >= late_ms * 0.9  # the first messages' lag


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--shard", "3/3"], {}, "--shard 3/3: the shard index I must be 0 to 2"),
        (["--shard", "-1/2"], {}, "--shard -1/2: the shard index I must be 0 to 1"),
        (["--shard", "1/0"], {}, "--shard 1/0: the shard count N must be at least 1"),
        (["--shard", "x"], {}, "not I/N"),
        ([], {"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX is set but ELF_SHARD_COUNT"),
        ([], {"AWS_BATCH_JOB_ARRAY_SIZE": "4"}, "AWS_BATCH_JOB_ARRAY_SIZE is set but"),
        (["--start-at", "1000"], {}, "in the past"),
        (["--start-at", "2001-01-01T00:00:00Z"], {}, "in the past"),
        (["--start-at", "garbage"], {}, "--start-at 'garbage': not a time"),
        (["--start-at", "2030-01-01T00:00:00"], {}, "give a time zone"),
    ],
)
@pytest.mark.parametrize("command", ["send", "subscribe"])
def test_bad_shard_input_is_one_line_and_exit_2(
    cli: Cli, command: str, args: list[str], env: dict[str, str], fragment: str
) -> None:
    assert_one_line_error(cli(command, *args, env=env), 2, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["create", "4", "--shard", "0/2"], "give every shard the same --fleet-id"),
        (["create", "4", "--fleet-id", "Not-An-Id"], "--fleet-id 'Not-An-Id': a fleet id is 8"),
        (["create", "4", "--fleet-id", "abcd1234", "--run-id", "7"], "cannot be used together"),
        (["run", "4", "--shard", "2/2"], "--shard 2/2: the shard index I must be 0 to 1"),
        (["run", "4", "--shard", "1/2"], "give every shard the same --fleet-id"),
        (["clean", "--fleet", "abcd1234", "--shard", "0/2"], "drop --shard"),
    ],
)
def test_bad_fleet_input_is_one_line_and_exit_2(cli: Cli, args: list[str], fragment: str) -> None:
    assert_one_line_error(cli(*args), 2, fragment)


def test_a_state_dir_keeps_its_shard(cli: Cli, test_ca: FixtureCA) -> None:
    ca = ["--cert-mode", "ca", "--ca-cert", str(test_ca.cert_file), "--ca-key",
          str(test_ca.key_file), "--key-type", "ec"]  # fmt: skip
    result = cli("create", "4", "--shard", "1/2", "--fleet-id", "keep0001", *ca)
    assert result.returncode == 0, result.stderr
    assert_one_line_error(
        cli("create", "4", "--shard", "0/2", "--fleet-id", "keep0001", *ca), 2, "shard 1/2"
    )
    assert_one_line_error(
        cli("send", "--shard", "0/2", "--mqtt-endpoint", "127.0.0.1:1"), 2, "not --shard 0/2"
    )
    assert cli("clean").returncode == 0


def test_budgets_split_between_shards() -> None:
    from elf_async.cli._args import ConnectArgs, SendArgs, ShardArgs
    from elf_async.cli._common import api_rates
    from elf_async.cli._options import parse_send_options
    from elf_async.controlplane.aws import default_api_rates
    from elf_async.shards import Shard

    args = SendArgs(connect=ConnectArgs(connect_rate="300/s"), sharding=ShardArgs(shard="1/3"))
    assert parse_send_options(args).connect.connect_per_s == 100
    whole = parse_send_options(dataclasses.replace(args, sharding=ShardArgs()))
    assert whole.connect.connect_per_s == 300
    quarter = api_rates(["CreateThing=40/s"], Shard(0, 4))
    assert quarter["CreateThing"] == 10
    assert quarter["DeleteThing"] == default_api_rates()["DeleteThing"] / 4
