"""`send --workers N` against a real mosquitto with mutual TLS: one schedule over several
processes, one merged report; an independent paho subscriber counts what arrived."""

from __future__ import annotations

import json
import os
import pickle
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.local import LocalCli, alive, children, reaping
from support.mqtt import FixtureCA, Observer
from support.send import load, send, things_of
from support.wait import wait_until

from elf_async.dataplane.connections import Endpoint, Identity
from elf_async.dataplane.payload import build_spec
from elf_async.dataplane.plan import SendPlan, SendSetup, ThingPlan
from elf_async.dataplane.schedule import ThingSchedule
from elf_async.jobs.workers import WorkerView, send_in_workers
from elf_async.local.mosquitto import Mosquitto
from elf_async.metrics import Histogram, merge_series, merged
from elf_async.stopping import StopSignal


def test_histograms_cross_processes_and_merge_exactly() -> None:
    a, b = Histogram(), Histogram()
    for ms in range(1, 101):
        a.record(ms / 1000)
    for ms in range(101, 201):
        b.record(ms / 1000)
    copies = [pickle.loads(pickle.dumps(h)) for h in (a, b)]
    assert [h.summary_ms() for h in copies] == [a.summary_ms(), b.summary_ms()]
    total = merged(copies)
    assert total.count == 200
    assert total.percentile_ms(50) == pytest.approx(100, rel=0.01)  # not the mean of p50s
    assert pickle.loads(pickle.dumps(Histogram())).count == 0


def test_series_of_workers_merge_by_second() -> None:
    first = [{"t": 1, "published": 3, "connected": 2}, {"t": 1.4, "published": 1, "connected": 0}]
    second = [{"t": 1, "published": 5, "connected": 2}, {"t": 2, "published": 4, "connected": 2},
              {"t": 2.2, "published": 1, "connected": 0}]  # fmt: skip
    assert merge_series([first, second]) == [
        {"t": 1, "published": 8, "connected": 4},
        {"t": 2, "published": 5, "connected": 2},
        {"t": 2.2, "published": 1, "connected": 0},
    ]


def _plan_and_setup(
    mosquitto: Mosquitto, test_ca: FixtureCA, rogue_ca: FixtureCA, tmp_path: Path
) -> tuple[SendPlan, SendSetup]:
    """Four things at 10/s for 5 messages each, QoS 1; the last one's certificate comes from a
    CA the broker distrusts, so it never connects."""
    things = []
    for index in range(4):
        name = f"hook-{index}"
        ca = rogue_ca if index == 3 else test_ca
        key_file, cert_file = ca.client_cert(tmp_path, name)
        schedule = ThingSchedule(rate=10.0, phase=index / 40, total=5)
        identity = Identity(name, index, key_file, cert_file)
        things.append(ThingPlan(identity, f"elf/{name}", schedule))
    spec = build_spec(message=None, json_message=None, template=None, size=None, stamp=None)
    setup = SendSetup(
        endpoint=Endpoint("127.0.0.1", mosquitto.port, mosquitto.ca_file.read_text()),
        connect_per_s=100.0,
        connect_timeout=10.0,
        connect_retries=0,
        keepalive=60,
        drain=5.0,
    )
    return SendPlan(things, spec, qos=1, window=10), setup


async def test_before_go_sees_each_connected_worker_before_anything_is_sent(
    mosquitto: Mosquitto,
    test_ca: FixtureCA,
    rogue_ca: FixtureCA,
    observer: Callable[..., Observer],
    tmp_path: Path,
) -> None:
    """The public seam a benchmark holds GO with: every worker has said READY with its real
    connected count, its process runs under ours, and nothing has been published yet."""
    plan, setup = _plan_and_setup(mosquitto, test_ca, rogue_ca, tmp_path)
    watcher = observer("elf/#", qos=1)
    seen: list[WorkerView] = []
    published_before_go: list[int] = []

    async def before_go(workers: Sequence[WorkerView]) -> None:
        seen.extend(workers)
        assert all(alive(w.pid) and w.pid in children(os.getpid()) for w in workers)
        published_before_go.append(sum(watcher.counts().values()))

    tally = await send_in_workers(
        plan, setup, 2, StopSignal(), on_tick=lambda snapshot: None, verbose=False,
        before_go=before_go,
    )  # fmt: skip
    # Round-robin: worker 0 has things 0 and 2, worker 1 things 1 and 3 (3 is refused).
    assert [(w.number, w.things, w.connected) for w in seen] == [(0, 2, 2), (1, 2, 1)]
    assert published_before_go == [0]
    assert not [w.pid for w in seen if alive(w.pid)]
    totals = tally.totals()
    assert (totals.published, totals.acked) == (15, 15)


async def test_what_before_go_raises_ends_the_send_and_kills_every_worker(
    mosquitto: Mosquitto, test_ca: FixtureCA, rogue_ca: FixtureCA, tmp_path: Path
) -> None:
    plan, setup = _plan_and_setup(mosquitto, test_ca, rogue_ca, tmp_path)
    pids: list[int] = []

    async def before_go(workers: Sequence[WorkerView]) -> None:
        pids.extend(w.pid for w in workers)
        raise RuntimeError("the benchmark said no")

    with pytest.raises(RuntimeError, match="said no"):
        await send_in_workers(
            plan, setup, 2, StopSignal(), on_tick=lambda snapshot: None, verbose=False,
            before_go=before_go,
        )  # fmt: skip
    assert len(pids) == 2
    assert not [pid for pid in pids if alive(pid)]


def test_two_workers_publish_the_schedule_and_merge_one_report(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet4, mosquitto, "--workers", "2", "--rate", "20/s", "--duration", "2",
                  "--qos", "1", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = load(report_file)
    assert report["options"]["workers"] == 2
    assert report["workers"] == {"count": 2, "lost": []}
    rows = report["things"]
    assert [t["name"] for t in rows] == things_of(fleet4)  # fleet order, as with one worker
    watcher.settle(160)
    counts = watcher.counts()
    for row in rows:
        assert row["scheduled"] == row["published"] == row["acked"] == 40  # rate x duration
        assert counts.get(f"elf/{row['name']}") == row["published"]
        docs = watcher.documents(f"elf/{row['name']}")
        assert sorted(d["seq"] for d in docs) == list(range(40))
    messages = report["messages"]
    assert messages["scheduled"] == messages["published"] == messages["acked"] == 160
    assert messages["failed"] == messages["unsent"] == 0
    latency = report["latency_ms"]
    assert latency["ack"]["count"] == latency["ack_from_send"]["count"] == 160
    assert latency["lag"]["count"] == 160
    assert latency["connect"]["count"] == 4
    assert report["connections"]["succeeded"] == report["connections"]["attempted"] == 4
    series = report["series"]
    assert sum(row["published"] for row in series) == 160  # merged by second, nothing lost
    assert sum(row["acked"] for row in series) == 160
    assert [row["t"] for row in series] == sorted(row["t"] for row in series)
    assert report["rate"]["target_per_s"] == 80


def test_sigint_with_two_workers_writes_a_merged_report_and_leaves_no_worker(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    watcher = observer("elf/#")
    process = fleet4.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--workers", "2", "--rate", "10/s", "--duration", "60",
        "--report", str(report_file),
    )  # fmt: skip
    with reaping(process) as workers:
        wait_until(lambda: len(watcher.counts()) == 4, what="a message from every thing")
        workers |= children(process.pid)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert len(workers) == 2
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not [pid for pid in workers if alive(pid)]
    report = load(report_file)
    assert report["outcome"] == "interrupted"
    assert report["workers"] == {"count": 2, "lost": []}
    messages = report["messages"]
    assert 0 < messages["published"] < 2400
    assert messages["acked"] == messages["published"]
    assert all(row["published"] > 0 for row in report["things"])
    assert report["latency_ms"]["ack"]["count"] == messages["acked"]


def test_a_worker_that_dies_is_a_runtime_failure_reported_with_the_others_counts(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path
) -> None:
    report_file = tmp_path / "report.json"
    watcher = observer("elf/#")
    process = fleet4.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--workers", "2", "--rate", "10/s", "--duration", "3",
        "--report", str(report_file),
    )  # fmt: skip
    with reaping(process) as workers:
        wait_until(lambda: len(watcher.counts()) == 4, what="a message from every thing")
        workers |= children(process.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "exited with code -9" in stderr.splitlines()[-1]
    report = load(report_file)
    assert len(report["workers"]["lost"]) == 1
    rows = report["things"]
    lost = [row for row in rows if row["error"]]
    kept = [row for row in rows if not row["error"]]
    assert len(lost) == len(kept) == 2
    assert all(row["published"] == row["acked"] == 30 for row in kept)
    assert report["messages"]["published"] == 60


def test_workers_exit_when_the_parent_is_killed(
    fleet4: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer]
) -> None:
    watcher = observer("elf/#")
    process = fleet4.popen(
        "send", "--mqtt-endpoint", f"127.0.0.1:{mosquitto.port}", "--ca-file",
        str(mosquitto.ca_file), "--workers", "2", "--rate", "10/s", "--duration", "60",
    )  # fmt: skip
    with reaping(process) as workers:
        wait_until(lambda: len(watcher.counts()) == 4, what="a message from every thing")
        workers |= children(process.pid)
        process.kill()  # no chance to clean up: the workers must notice on their own
        process.wait()
        assert len(workers) == 2
        wait_until(
            lambda: not any(alive(pid) for pid in workers),
            what="the workers to exit after their parent",
        )


def test_run_passes_workers_to_its_send(local_cli: LocalCli, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    result = local_cli(
        "--local", "run", "2", "--workers", "2", "--rate", "2/s", "--duration", "2s",
        "--report", str(report_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text())
    assert report["workers"] == {"count": 2, "lost": []}
    assert report["messages"]["published"] == report["messages"]["acked"] == 8


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_workers_is_one_line_and_exit_2(fleet4: Cli, mosquitto: Mosquitto, value: str) -> None:
    result = send(fleet4, mosquitto, "--workers", value)
    assert_one_line_error(result, 2, "--workers")
