"""`--scenario FILE.toml`: keys are the options, checked by their declared types and named by
line when wrong; groups of things that send differently count as the same sends run apart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.local import LocalCli
from support.mqtt import FixtureCA, Observer
from support.report import assert_conforms
from support.send import created, load, send

from elf_async.cli import run
from elf_async.cli._scenario import GROUP_KEYS, Scenario
from elf_async.cli._scenario import load as load_scenario
from elf_async.controlplane.ledger import Ledger
from elf_async.dataplane.shape import Shape, parse_stages
from elf_async.errors import UsageError
from elf_async.local.mosquitto import Mosquitto
from elf_async.report.merge import merge
from elf_async.report.model import RunReport, SendReport

EXAMPLES = Path(__file__).parents[2] / "examples"
RUN_HINTS = get_type_hints(run.command, include_extras=True)


def scenario(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path, RUN_HINTS)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as caught:
        scenario(tmp_path, text)
    return str(caught.value)


def test_every_send_option_is_a_key_and_the_send_options_are_the_groups() -> None:
    """Derived from the declared options: one added to SendArgs is a key with nothing to do."""
    for key in ("rate", "qos", "topic", "payload_template", "payload_file", "count", "stamp"):
        assert key in GROUP_KEYS
    for run_wide in ("things", "report", "workers", "connect_rate", "shard", "metrics_port"):
        assert run_wide not in GROUP_KEYS


def test_keys_become_typed_options(tmp_path: Path) -> None:
    read = scenario(tmp_path, """
things = 4
duration = 60
connect-rate = "50/s"
threshold = ["ack.p99<250ms"]
allow_over_aws_limits = true

[[group]]
name = "a"
share = 0.25
rate = 2
payload_file = "data/m.jsonl"

[[group]]
share = 0.75
qos = 0
""")  # fmt: skip
    assert read.values == {
        "things": 4, "duration": "60", "connect_rate": "50/s", "threshold": ["ack.p99<250ms"],
        "allow_over_aws_limits": True,
    }  # fmt: skip
    first, second = read.groups
    assert (first.name, first.share, first.things) == ("a", 0.25, None)
    assert first.values == {"rate": "2", "payload_file": tmp_path / "data" / "m.jsonl"}
    assert (second.name, second.values) == ("group 2", {"qos": 0})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('rate = "1/s"\nqos = "one"\n', 's.toml:2: qos: expected a whole number, got "one"'),
        ("ratte = 3\n", "s.toml:1: ratte: not an option (did you mean rate?)"),
        ("qos = 1\n[[group]]\nshare = 1\n\nworkers = 2\n",
         's.toml:5: group "group 1": workers: an option of the whole run, not of a group'),
        ('[[group]]\nname = "a"\nshare = 0.5\n[[group]]\nname = "b"\nshare = 0.4\n',
         's.toml:6: group "b": share: the groups\' shares add up to 0.9, not 1'),
        ('[[group]]\nname = "a"\nshare = 0.5\nthings = 2\n',
         's.toml:4: group "a": give the group either a share'),
        ('[[group]]\nname = "a"\nshare = 1\n[[group]]\nname = "b"\nthings = 3\n',
         's.toml:6: group "b": things: the groups give either all a share'),
        ('[[group]]\nname = "a"\n', 's.toml:1: group "a": say how much of the fleet'),
        ('[[group]]\nname = "a"\nshare = 1.5\n', 's.toml:3: group "a": share: expected a fraction'),
        ('[[group]]\nname = "a"\nthings = 1\n[[group]]\nname = "a"\nthings = 1\n',
         's.toml:2: group "a": name: two groups are called'),
        ("[group]\nshare = 1\n", "s.toml:1: group: write each group as a [[group]] table"),
        ("rate = \n", "s.toml:1: not TOML: "),
        ('[[group]]\nthings = 1\nstamp = "yes"\n',
         's.toml:3: group "group 1": stamp: expected true or false, got "yes"'),
        ('scenario = "other.toml"\n', "s.toml:1: scenario: a scenario cannot read another"),
    ],
)  # fmt: skip
def test_bad_keys_are_named_with_their_line(tmp_path: Path, text: str, error: str) -> None:
    assert error in refused(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "args", "fragments"),
    [
        ('duration = "5s"\n\n[[group]]\nname = "burst"\nshare = 1\nrate = "fast"\n', (),
         ['s.toml:6: group "burst": rate: \'fast\' is not a rate']),
        ('count = 5\nduration = "5s"\n', (),
         ["s.toml:1: --count and --duration cannot be used together"]),
        ("connect_retries = -1\n", (),
         ["s.toml:1: connect_retries: Input should be greater than or equal to 0"]),
        ('payload_file = "missing.jsonl"\n', (),
         ["s.toml:1: --payload-file ", "missing.jsonl: no such file"]),
        ('rate = "fast"\n', ("--rate", "x"), ["--rate: 'x' is not a rate"]),
        ('duration = "5s"\n\n[[group]]\nname = "ramp"\nshare = 1\nstages = "3s:0..x"\n', (),
         ['s.toml:6: group "ramp": stages: \'3s:0..x\': devices are N or FROM..TO']),
    ],
)  # fmt: skip
def test_the_cli_exits_2_naming_the_key_and_line(
    cli: Cli, tmp_path: Path, text: str, args: tuple[str, ...], fragments: list[str]
) -> None:
    """Checked before any fleet is looked for; an option on the command line wins."""
    (tmp_path / "s.toml").write_text(text)
    result = cli("send", "--scenario", str(tmp_path / "s.toml"), *args)
    assert_one_line_error(result, 2, *fragments)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_the_examples_are_valid(local_cli: LocalCli, example: Path) -> None:
    """Every option of every group parsed as `run` does before it creates anything (a state
    dir with a fleet's ledger stops it right after)."""
    with Ledger.open(local_cli.state_dir, create=True):
        pass
    result = local_cli("run", "--scenario", str(example))
    assert_one_line_error(result, 2, "already holds a fleet")


def test_the_fleet_example_runs_as_written(local_cli: LocalCli, tmp_path: Path) -> None:
    """README's example: `run --local` starts a local stack, runs both groups, cleans up."""
    report_file = tmp_path / "fleet.json"
    result = local_cli("run", "--local", "--scenario", str(EXAMPLES / "fleet.toml"),
                       "--report", str(report_file), "--duration", "3s")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert_conforms(report, RunReport)
    groups = {g["name"]: g for g in report["scenario"]["groups"]}
    assert (groups["meters"]["things"], groups["alarms"]["things"]) == (8, 2)
    assert groups["meters"]["acked"] == groups["meters"]["planned"] == 8 * 6
    # 0.5/s over 3 s, phases spread over the first 2 s: 2 messages, then 1
    assert groups["alarms"]["published"] == groups["alarms"]["planned"] == 3
    assert groups["alarms"]["acked"] is None


def test_two_groups_count_as_the_same_sends_run_apart(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    """A group is a slice of the fleet sending with its own options: its counts are those of
    the same send on that many things, and its things publish on its topic."""
    watcher = observer("#", qos=1)
    (tmp_path / "two.toml").write_text("""
count = 3
[[group]]
name = "telemetry"
share = 0.5
rate = "4/s"
topic = "elf/telemetry/{thing}"

[[group]]
name = "alarms"
share = 0.5
rate = "2/s"
count = 2
qos = 0
topic = "elf/alarms/{thing}"
""")  # fmt: skip
    together = tmp_path / "together.json"
    result = send(fleet4, mosquitto, "--scenario", str(tmp_path / "two.toml"),
                  "--report", str(together))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(together)
    apart = []
    for number, args in enumerate(
        [("--rate", "4/s", "--count", "3"), ("--rate", "2/s", "--count", "2", "--qos", "0")]
    ):
        path = tmp_path / f"apart{number}.json"
        alone = send(fleet4, mosquitto, "--things", "2", *args, "--report", str(path))
        assert alone.returncode == 0, alone.stderr
        apart.append(load(path))
    groups = report["scenario"]["groups"]
    assert report["scenario"]["file"] == str(tmp_path / "two.toml")
    assert [(g["name"], g["things"], g["qos"]) for g in groups] == [
        ("telemetry", 2, 1), ("alarms", 2, 0)
    ]  # fmt: skip
    for group, alone in zip(groups, apart, strict=True):
        messages = alone["messages"]
        assert group["planned"] == group["scheduled"] == messages["scheduled"]
        assert group["published"] == messages["published"]
        assert group["acked"] == messages["acked"]
        assert group["failed"] == group["unsent"] == 0
    assert report["messages"]["scheduled"] == sum(a["messages"]["scheduled"] for a in apart) == 10
    assert report["messages"]["acked"] == apart[0]["messages"]["acked"] == 6
    names = [t["name"] for t in report["things"]]
    watcher.settle(10 + 10)  # the scenario's, then the two sends' on the fleet's own topics
    counts = watcher.counts()
    assert [counts.get(f"elf/telemetry/{n}") for n in names] == [3, 3, None, None]
    assert [counts.get(f"elf/alarms/{n}") for n in names] == [None, None, 2, 2]


def test_the_command_line_wins_over_the_file_and_its_groups(
    fleet: Cli, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "s.toml").write_text(
        'count = 5\nrate = "1/s"\n[[group]]\nthings = 1\ncount = 4\n[[group]]\nthings = 2\n'
    )
    path = tmp_path / "r.json"
    result = send(fleet, mosquitto, "--scenario", str(tmp_path / "s.toml"), "--count", "2",
                  "--rate", "10/s", "--report", str(path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = load(path)
    assert [g["planned"] for g in report["scenario"]["groups"]] == [2, 4]
    assert report["options"]["count"] == 2


TWO_GROUPS = """
count = 4
rate = "5/s"
[[group]]
name = "a"
share = 0.75
[[group]]
name = "b"
share = 0.25
qos = 0
payload_file = "lines.jsonl"
payload_order = "round-robin"
"""


def test_groups_hold_across_workers_and_shards(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    """--workers deals each group's things out with their group's options; shards each send
    their slice of every group, and their reports merge group by group."""
    (tmp_path / "lines.jsonl").write_text('{"n": 0}\n{"n": 1}\n')
    (tmp_path / "s.toml").write_text(TWO_GROUPS)
    watcher = observer("#", qos=1)
    reports = []
    for args in (("--workers", "2"), ("--shard", "0/2"), ("--shard", "1/2")):
        path = tmp_path / f"r{len(reports)}.json"
        result = send(fleet4, mosquitto, "--scenario", str(tmp_path / "s.toml"), *args,
                      "--report", str(path))  # fmt: skip
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(path.read_text()))
    merged: Any = merge([("r1.json", reports[1]), ("r2.json", reports[2])])
    for report in (reports[0], merged):
        assert_conforms(report, SendReport)
        a, b = report["scenario"]["groups"]
        assert (a["things"], a["planned"], a["acked"]) == (3, 12, 12)
        assert (b["things"], b["planned"], b["published"], b["acked"]) == (1, 4, 4, None)
    assert [g["things"] for g in reports[2]["scenario"]["groups"]] == [1, 1]
    watcher.settle(2 * 16)  # the workers' send, then each thing in one of the shards'
    last = reports[0]["things"][3]["topic"]  # group b's only thing: the lines in turn
    assert watcher.messages[last][:4] == [b'{"n": 0}', b'{"n": 1}'] * 2


def test_each_group_follows_its_own_stages(
    cli: Cli,
    test_ca: FixtureCA,
    mosquitto: Mosquitto,
    observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:
    """A group's stages plan its devices within the group; a group without any holds its
    things at its rate for the run's duration; the planned connected devices add up."""
    fleet8 = created(cli, test_ca, 8)
    watcher = observer("elf/#", qos=1)
    (tmp_path / "shaped.toml").write_text("""
duration = "6s"
connect_rate = "200/s"

[[group]]
name = "ramp"
things = 6
rate = "4/s"
stages = "3s:0..6,3s:6..0"

[[group]]
name = "steady"
things = 2
rate = "2/s"
""")  # fmt: skip
    report_file = tmp_path / "report.json"
    result = send(fleet8, mosquitto, "--scenario", str(tmp_path / "shaped.toml"),
                  "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no task left pending
    report = load(report_file)
    assert_conforms(report, SendReport)
    ramp = Shape(parse_stages("3s:0..6,3s:6..0", rate=4.0))
    steady = Shape(parse_stages("6s:2", rate=2.0))
    planned = [
        a + b
        for a, b in zip(
            ramp.planned_per_second(range(6), 6),
            steady.planned_per_second(range(2), 2),
            strict=True,
        )
    ]
    messages = report["messages"]
    assert messages["scheduled"] == sum(planned) == sum(ramp.planned_per_second(range(6), 6)) + 24
    assert messages["acked"] == messages["published"] == messages["scheduled"]
    stages = report["stages"]
    assert [(s.get("group"), s["index"], s["devices"]) for s in stages] == [
        ("ramp", 0, [0, 6]), ("ramp", 1, [6, 0]), ("steady", 0, [2, 2])
    ]  # fmt: skip
    offset = stages[0]["start_s"]
    assert offset == int(offset)
    assert {s["start_s"] for s in stages} == {offset, offset + 3}
    rows = [row for row in report["series"] if row["t"] > offset]
    assert len(rows) == len(planned)
    for second, row in enumerate(rows):
        assert row["stage"] is None  # the groups' stages overlap: each is in `stages`
        if row["t"] == int(row["t"]):  # the row is sampled at the end of its second
            want = ramp.devices_at(second + 1) + steady.devices_at(second + 1)
            assert row["target_connected"] == want, (second, row)
            assert abs(row["connected"] - want) <= 1, (second, row)
    groups = {g["name"]: g for g in report["scenario"]["groups"]}
    assert groups["steady"]["acked"] == groups["steady"]["planned"] == 24
    assert groups["ramp"]["acked"] == groups["ramp"]["planned"] == messages["acked"] - 24
    watcher.settle(messages["acked"])
    assert sum(watcher.counts().values()) == messages["acked"]
    (tmp_path / "big.toml").write_text('[[group]]\nname = "big"\nthings = 8\nstages = "3s:0..9"\n')
    too_big = send(fleet8, mosquitto, "--scenario", str(tmp_path / "big.toml"))
    assert_one_line_error(too_big, 2, "group 'big': stages: a stage has 9 devices, the group 8")
    (tmp_path / "counted.toml").write_text(
        '[[group]]\nname = "a"\nthings = 4\nstages = "3s:4"\n'
        '[[group]]\nname = "b"\nthings = 4\ncount = 3\n'
    )
    counted = send(fleet8, mosquitto, "--scenario", str(tmp_path / "counted.toml"))
    assert_one_line_error(counted, 2, "group 'b': next to stages", "not a count")
