"""`run --cluster`: a real `dask scheduler` and `dask worker` processes started by their CLIs
on 127.0.0.1, the local stack, and an independent subscriber as the witness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from support.fixtures import assert_one_line_error, iot_client
from support.local import LocalCli
from support.mqtt import FixtureCA, Observer
from support.wait import wait_until

from elf_async.controlplane.certs import CertificateAuthority
from elf_async.dataplane.schedule import plan
from elf_async.local.mosquitto import Mosquitto
from elf_async.local.processes import Owned
from elf_async.metrics import Histogram

DASK = Path(sys.executable).parent / "dask"


@dataclass
class DaskCluster:
    address: str
    processes: list[subprocess.Popen[bytes]]

    def worker_pids(self) -> dict[str, int]:
        """Each worker process's PID, by its address (as the driver sees the workers)."""
        with Client(self.address, timeout=30) as client:
            pids: dict[str, int] = client.run(os.getpid)
        return pids


@pytest.fixture
def stack(local_cli: LocalCli) -> Iterator[dict[str, Any]]:
    """A stack started with `local up`, so that moto and the broker can be watched."""
    assert local_cli("local", "up").returncode == 0
    record = local_cli.stack()
    assert record is not None
    yield record
    assert local_cli("local", "down").returncode == 0


@pytest.fixture
def dask_cluster(local_cli: LocalCli, tmp_path: Path) -> Iterator[DaskCluster]:
    """`dask scheduler` and two `dask worker` processes, each in a session of its own (killed
    by process group afterwards), with the fake AWS credentials a worker would have from its
    own role."""
    scheduler_file = tmp_path / "scheduler.json"
    env = local_cli.env()
    processes = [
        subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    ]  # fmt: skip
    try:
        wait_until(scheduler_file.is_file, what="the scheduler file")
        wait_until(lambda: "address" in scheduler_file.read_text(), what="its address")
        address = json.loads(scheduler_file.read_text())["address"]
        for number in range(2):
            processes.append(
                subprocess.Popen(
                    [str(DASK), "worker", "--scheduler-file", str(scheduler_file), "--host",
                     "127.0.0.1", "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                     "--local-directory", str(tmp_path / f"worker-{number}")],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=120)
        yield DaskCluster(address, processes)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def watcher(local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path) -> Observer:
    """An independent paho subscriber to elf/#, with a certificate of the local stack's CA."""
    local = local_cli.state_dir / "local"
    ca = CertificateAuthority.load(local / "ca.crt", local / "ca.key")
    broker = Mosquitto.attach(
        process=Owned(stack["mosquitto"]["pid"], stack["mosquitto"]["started"]),
        port=stack["mosquitto"]["port"],
        directory=local / "mosquitto",
    )
    fixture_ca = FixtureCA(ca, local / "ca.crt", local / "ca.key")
    return Observer(broker, *fixture_ca.client_cert(tmp_path, "observer"), topic="elf/#").start()


def assert_nothing_left(iot: Any) -> None:
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []


def test_two_shards_on_dask_merge_exactly_what_the_broker_delivered(
    local_cli: LocalCli, stack: dict[str, Any], dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    report = tmp_path / "merged.json"
    observer = watcher(local_cli, stack, tmp_path)
    try:
        result = local_cli(
            "--local", "run", "40", "--cluster", dask_cluster.address, "--shards", "2",
            "--rate", "2/s", "--duration", "3s", "--report", str(report),
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        document = json.loads(report.read_text())
        messages = document["messages"]
        observer.settle(messages["acked"])
        received = observer.counts()
    finally:
        observer.stop()
    assert document["shards"] == {"count": 2, "merged": 2, "missing": 0}
    # The single-process plan of the same schedule: the same messages, exactly.
    expected = sum(s.total for s in plan(40, 2.0, duration=3.0))
    assert messages["scheduled"] == messages["published"] == messages["acked"] == expected
    assert sum(received.values()) == expected
    assert {row["topic"]: row["acked"] for row in document["things"]} == received
    assert len(document["things"]) == 40
    # The histograms are merged, not averaged: every acknowledgement is in the merged one.
    ack = Histogram.decode(document["histograms"]["ack"].encode())
    assert ack.count == expected == document["latency_ms"]["ack"]["count"]
    assert document["run"]["cleaned"] is True
    assert document["run"]["created"] == 40
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_a_killed_worker_is_a_missing_shard_and_its_things_are_removed_by_tag(
    local_cli: LocalCli, stack: dict[str, Any], dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    report = tmp_path / "merged.json"
    pids = dask_cluster.worker_pids()
    observer = watcher(local_cli, stack, tmp_path)
    try:
        process = local_cli.popen(
            "--local", "run", "6", "--cluster", dask_cluster.address, "--shards", "2",
            "--rate", "2/s", "--duration", "30s", "--report", str(report),
        )  # fmt: skip
        try:
            # Both shards sending: every thing's topic has a message (so both were READY).
            wait_until(lambda: len(observer.counts()) == 6, what="a message from every thing")
            os.kill(pids[sorted(pids)[1]], signal.SIGKILL)
            out, err = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    finally:
        observer.stop()
    assert process.returncode == 1, out + err
    document = json.loads(report.read_text())
    assert document["shards"] == {"count": 2, "merged": 1, "missing": 1}
    assert "left the cluster" in document["run"]["failure"]
    assert document["run"]["cleaned"] is True
    assert_nothing_left(iot_client(stack["endpoint_url"]))


def test_a_local_cluster_of_two(local_cli: LocalCli, stack: dict[str, Any], tmp_path: Path) -> None:
    report = tmp_path / "merged.json"
    result = local_cli(
        "--local", "run", "4", "--cluster", "local:2", "--rate", "2/s", "--duration", "2s",
        "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    assert document["shards"] == {"count": 2, "merged": 2, "missing": 0}
    assert document["messages"]["acked"] == document["messages"]["scheduled"] == 16
    assert_nothing_left(iot_client(stack["endpoint_url"]))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--cluster", "local:2", "--shards", "0"], "--shards 0: must be at least 1"),
        (["--cluster", "bogus"], "--cluster 'bogus': not tcp://HOST:PORT"),
        (["--cluster", "tcp://127.0.0.1:1", "--shards", "2"], "no Dask scheduler answered"),
        (["--cluster", "local:1", "--shards", "2"], "the cluster has 1 worker processes"),
        (["--cluster", "local:2", "--shard", "0/2", "--fleet-id", "load0001"], "drop --shard"),
        (["--cluster", "local:2", "--identity", "shared"], "--identity shared"),
        (["--shards", "2"], "--shards needs --cluster"),
    ],
)
def test_bad_cluster_input_is_one_line_and_exit_2(
    local_cli: LocalCli, args: list[str], fragment: str
) -> None:
    result = local_cli("run", "4", *args)
    assert_one_line_error(result, 2, fragment)
    assert not (local_cli.state_dir / "ledger.sqlite3").exists()  # nothing was created
