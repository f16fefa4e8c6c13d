"""The README's sharding recipes, each with the environment its scheduler gives: N local
processes run `run COUNT` as shards of one fleet (one --run-id, one --start-at), then
`report merge` joins their reports and, when a shard is missing, `clean --run-id` from a fresh
state dir sweeps what it left behind."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import iot_client
from support.local import LocalCli, finished

SHARDS = 2
FLEET = 4
RUN_ID = "recipe-42"
SEND = ("--rate", "2/s", "--duration", "3s", "--qos", "1")
# Time for every shard to start, create its slice and connect before the shared instant. A
# shard that is late still sends everything (caught up, its lag measured): nothing below
# depends on it being in time.
LEAD_S = 15


def shard_cli(local_cli: LocalCli, index: int) -> LocalCli:
    """Shard `index`'s own state dir, inside the stack's, so that it uses that local stack."""
    return LocalCli(local_cli.state_dir / f"shard-{index}")


def shard_given(style: str, index: int) -> tuple[list[str], dict[str, str]]:
    """How each scheduler names the shard: (extra arguments, environment)."""
    if style == "kubernetes":
        return [], {"JOB_COMPLETION_INDEX": str(index), "ELF_SHARD_COUNT": str(SHARDS)}
    if style == "batch":
        return [], {"AWS_BATCH_JOB_ARRAY_INDEX": str(index), "AWS_BATCH_JOB_ARRAY_SIZE": "2"}
    return ["--shard", f"{index}/{SHARDS}"], {}  # a CI matrix passes it explicitly


def run_shards(
    local_cli: LocalCli, style: str, indexes: list[int], tmp_path: Path
) -> list[subprocess.CompletedProcess[str]]:
    """`run FLEET` as the given shards, all at once, each writing `shard-I.json`."""
    start_at = str(int(time.time()) + LEAD_S)
    processes = []
    for index in indexes:
        args, env = shard_given(style, index)
        cli = shard_cli(local_cli, index)
        cli.state_dir.mkdir()
        command = cli.args(
            "--local", "run", str(FLEET), *SEND, *args, "--run-id", RUN_ID,
            "--start-at", start_at, "--report", str(tmp_path / f"shard-{index}.json"),
        )  # fmt: skip
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli.env(env),
                cwd=tmp_path,
            )
        )
    return finished(processes)


def assert_nothing_left(iot: Any) -> None:
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


@pytest.mark.parametrize("style", ["kubernetes", "batch", "matrix"])
def test_shards_run_then_merge_into_one_report(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path, style: str
) -> None:
    for result in run_shards(local_cli, style, list(range(SHARDS)), tmp_path):
        assert result.returncode == 0, result.stdout + result.stderr
    reports = [tmp_path / f"shard-{i}.json" for i in range(SHARDS)]
    shard_docs = [json.loads(path.read_text()) for path in reports]
    assert [d["shard"] for d in shard_docs] == [{"index": i, "count": SHARDS} for i in (0, 1)]
    assert len({d["fleet"]["fleet_id"] for d in shard_docs}) == 1  # one fleet

    merged_file, junit = tmp_path / "merged.json", tmp_path / "junit.xml"
    merged = local_cli(
        "report", "merge", *map(str, reports), "-o", str(merged_file), "--junit", str(junit)
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    document = json.loads(merged_file.read_text())
    assert document["shards"] == {"count": SHARDS, "merged": SHARDS, "missing": 0}
    due = FLEET * 2 * 3  # things x rate x seconds
    assert document["messages"]["scheduled"] == document["messages"]["acked"] == due
    assert sorted(t["name"] for t in document["things"]) == sorted(
        t["name"] for d in shard_docs for t in d["things"]
    )
    assert_nothing_left(iot_client(stack["endpoint_url"]))  # each shard cleaned its slice


def test_a_shard_that_died_fails_the_merge_and_the_sweep_removes_its_things(
    local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path
) -> None:
    """Shard 1 created its slice and died: no report. The merge says so (exit 1) and
    `clean --run-id` from a fresh state dir finds its things by the fleet attribute."""
    dead = shard_cli(local_cli, 1)
    dead.state_dir.mkdir()
    args, env = shard_given("kubernetes", 1)
    created = dead("--local", "create", str(FLEET), *args, "--run-id", RUN_ID, env=env)
    assert created.returncode == 0, created.stderr
    (alive,) = run_shards(local_cli, "kubernetes", [0], tmp_path)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    iot = iot_client(stack["endpoint_url"])
    assert len(iot.list_things()["things"]) == FLEET // SHARDS  # the dead shard's slice

    merged_file = tmp_path / "merged.json"
    merged = local_cli("report", "merge", str(tmp_path / "shard-0.json"), "-o", str(merged_file))
    assert merged.returncode == 1, merged.stdout + merged.stderr
    assert json.loads(merged_file.read_text())["shards"] == {
        "count": SHARDS,
        "merged": 1,
        "missing": 1,
    }

    sweep = LocalCli(local_cli.state_dir / "sweep")
    sweep.state_dir.mkdir()
    swept = sweep("--local", "clean", "--run-id", RUN_ID, "--json")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert json.loads(swept.stdout)["removed"] == FLEET // SHARDS
    assert_nothing_left(iot)
