"""`send` with 100 KB messages: batches far larger than one TLS record, still exact counts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.fixtures import Cli
from support.mqtt import Observer
from support.send import fleet, load, send, things_of

from elf_async.local.mosquitto import Mosquitto

__all__ = ["fleet"]  # the fixture, imported for pytest


@pytest.mark.parametrize("qos", ["0", "1"])
def test_big_payloads_arrive_exactly_once_each(
    fleet: Cli, mosquitto: Mosquitto, observer: Callable[..., Observer], tmp_path: Path, qos: str
) -> None:
    watcher = observer("elf/#", qos=1)
    report_file = tmp_path / "report.json"
    result = send(fleet, mosquitto, "--rate", "20/s", "--duration", "2", "--qos", qos,
                  "--payload-size", "100000", "--report", str(report_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    messages = load(report_file)["messages"]
    assert messages["published"] == messages["scheduled"] == 120
    assert messages["failed"] == messages["unsent"] == 0
    if qos == "1":
        assert messages["acked"] == 120
    watcher.settle(120, timeout=30)
    for name in things_of(fleet):
        docs = watcher.documents(f"elf/{name}")
        assert sorted(d["seq"] for d in docs) == list(range(40))
    assert watcher.payload_sizes() == {100_000}
