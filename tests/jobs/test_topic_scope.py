"""send and subscribe warn about a topic the fleet's policy does not allow the client that
uses it: per thing by default, the whole topic root with `create --shared-topics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elf_async.cli._options import (
    SendArgs,
    SubscribeArgs,
    parse_send_options,
    parse_subscribe_options,
)
from elf_async.controlplane.certs import thing_files
from elf_async.controlplane.ledger import STEPS, Ledger
from elf_async.dataplane.subscriber import Watch
from elf_async.jobs.send import Warnings, plan_send
from elf_async.jobs.subscribe import OLD_POLICY, build_watches


def fleet(state_dir: Path, scope: str | None, *, watch_ids: str | None = "yes") -> Ledger:
    """A ledger of three ready things with (empty) key files: enough to plan, no I/O. Its
    policy allows watcher ids unless `watch_ids` is None (a fleet from before them)."""
    ledger = Ledger.open(state_dir, create=True)
    ledger.set_meta(fleet_id="f1", topic_root="elf", topic_scope=scope, watch_ids=watch_ids)
    for record in ledger.add_things(3, "elf-f1", 5):
        for step in STEPS:
            ledger.mark(record.name, step, "created")
        for path in thing_files(state_dir, record.name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    return ledger


def send_warnings(tmp_path: Path, scope: str | None, topic: str | None) -> list[str]:
    warnings = Warnings()
    with fleet(tmp_path, scope) as ledger:
        plan_send(parse_send_options(SendArgs(topic=topic, count=1)), ledger, tmp_path, warnings)
    return warnings.lines


def watches(
    tmp_path: Path, scope: str | None, watch_ids: str | None = "yes", **options: Any
) -> tuple[list[Watch], list[str]]:
    warnings = Warnings()
    with fleet(tmp_path, scope, watch_ids=watch_ids) as ledger:
        found = build_watches(
            parse_subscribe_options(SubscribeArgs(**options)), ledger, tmp_path, warnings
        )
    return found, warnings.lines


def subscribe_warnings(tmp_path: Path, scope: str | None, **options: Any) -> list[str]:
    return watches(tmp_path, scope, **options)[1]


@pytest.mark.parametrize(
    "topic", [None, "elf/{thing}/telemetry", "$aws/things/{thing}/shadow/update"]
)
def test_send_defaults_fit_a_per_thing_policy(tmp_path: Path, topic: str | None) -> None:
    assert send_warnings(tmp_path, "thing", topic) == []


@pytest.mark.parametrize("scope", ["thing", "shared"])
def test_aws_topics_other_than_the_things_shadow_get_a_warning(tmp_path: Path, scope: str) -> None:
    assert send_warnings(tmp_path, scope, "$aws/things/{thing}/shadow/name/cfg/update") == []
    [line] = send_warnings(tmp_path / "b", scope, "$aws/rules/ingest/{thing}")
    assert "topic $aws/rules/ingest/elf-f1-00000 is outside the fleet policy" in line
    assert "own thing's shadow topics" in line


def test_subscribing_to_another_things_shadow_gets_a_warning(tmp_path: Path) -> None:
    """--client-offset: subscriber j connects as another thing than the one whose shadow it
    watches, which even a shared policy does not allow."""
    [line] = subscribe_warnings(
        tmp_path, "shared", things=1, client_offset=1, topic="$aws/things/{thing}/shadow/#"
    )
    assert "topic $aws/things/elf-f1-00000/shadow/# is outside the fleet policy" in line


def test_send_to_a_shared_topic_under_a_per_thing_policy(tmp_path: Path) -> None:
    [line] = send_warnings(tmp_path, "thing", "elf/all")
    assert "topic elf/all is outside the fleet policy" in line
    assert "--shared-topics" in line


@pytest.mark.parametrize("scope", ["shared", None])  # None: a fleet from before the choice
def test_shared_policy_allows_the_whole_root(tmp_path: Path, scope: str | None) -> None:
    assert send_warnings(tmp_path, scope, "elf/all") == []
    [line] = send_warnings(tmp_path / "again", scope, "other/{thing}")
    assert "topic other/elf-f1-00000 is outside the fleet policy (elf/ and below" in line


def test_subscribe_own_topics_fit_a_per_thing_policy(tmp_path: Path) -> None:
    assert subscribe_warnings(tmp_path, "thing") == []
    assert subscribe_warnings(tmp_path / "b", "thing", topic="elf/{thing}/#") == []


def test_subscribe_beside_a_send_needs_shared_topics(tmp_path: Path) -> None:
    """--client-offset: subscriber j connects as another thing than the one it watches."""
    [line] = subscribe_warnings(tmp_path, "thing", things=1, client_offset=1)
    assert "topic elf/elf-f1-00000 is outside the fleet policy" in line
    assert subscribe_warnings(tmp_path / "b", "shared", things=1, client_offset=1) == []


def test_subscribe_to_the_whole_root_as_the_things_under_a_per_thing_policy(
    tmp_path: Path,
) -> None:
    [line] = subscribe_warnings(tmp_path, "thing", topic="elf/#", client_offset=0)
    assert "topic elf/# is outside" in line
    assert subscribe_warnings(tmp_path / "b", "thing", topic="elf/#") == []  # watchers may


def test_subscribers_are_watchers_of_their_things_by_default(tmp_path: Path) -> None:
    """A send connects as the things: the subscribers' client ids cannot collide with it."""
    found, warnings = watches(tmp_path, "thing")
    assert warnings == []
    assert [(w.identity.name, w.identity.client_id, w.topic) for w in found] == [
        (f"elf-f1-0000{i}", f"elf-f1-0000{i}-watch", f"elf/elf-f1-0000{i}") for i in range(3)
    ]


def test_a_client_offset_connects_as_things_and_0_as_the_watched_things(tmp_path: Path) -> None:
    found, _ = watches(tmp_path, "shared", things=1, client_offset=1)
    assert [(w.identity.client_id, w.topic) for w in found] == [
        ("elf-f1-00001", "elf/elf-f1-00000")
    ]
    found, _ = watches(tmp_path / "b", "shared", client_offset=0)
    assert [w.identity.client_id for w in found] == [f"elf-f1-0000{i}" for i in range(3)]


def test_a_fleet_from_before_watcher_ids_subscribes_as_its_things_and_says_so(
    tmp_path: Path,
) -> None:
    found, warnings = watches(tmp_path, "thing", watch_ids=None)
    assert [w.identity.client_id for w in found] == [f"elf-f1-0000{i}" for i in range(3)]
    assert warnings == [OLD_POLICY]
