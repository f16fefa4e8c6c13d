"""The verdicts of send, run and subscribe (elf_async.report.verdict): pure functions over a
report."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from elf_async.report.verdict import send_problems, subscribe_problems

CLEAN_SEND: dict[str, Any] = {
    "command": "send",
    "messages": {
        "qos": 1,
        "scheduled": 30,
        "published": 30,
        "acked": 30,
        "failed": 0,
        "unsent": 0,
        "retransmitted": 2,
    },
    "connections": {
        "attempted": 4,
        "succeeded": 4,
        "failed": 1,  # a failed attempt retried, or a reconnect: not a problem by itself
        "reconnects": 1,
        "things_failed": 0,
        "errors": {"connection lost: keep-alive timeout": 1},
    },
}


def send_report(**changes: dict[str, Any]) -> dict[str, Any]:
    """CLEAN_SEND with some fields of its sections changed (or sections added)."""
    report = copy.deepcopy(CLEAN_SEND)
    for section, fields in changes.items():
        report.setdefault(section, {}).update(fields)
    return report


def test_a_clean_send_report_has_no_problems() -> None:
    assert send_problems(CLEAN_SEND) == []
    assert send_problems(send_report(workers={"count": 2, "lost": []})) == []
    assert send_problems(CLEAN_SEND, unresolved=[]) == []


def test_qos_0_has_no_acknowledgements_and_no_problem_for_it() -> None:
    report = send_report(messages={"qos": 0, "acked": None})
    assert send_problems(report) == []


def test_things_that_never_connected_owe_their_messages() -> None:
    """What the Sender reports for 5 things that never connected, 3 messages each."""
    report = send_report(
        messages={"scheduled": 15, "published": 0, "acked": 0, "unsent": 15},
        connections={"attempted": 5, "succeeded": 0, "failed": 5, "things_failed": 5},
    )
    assert send_problems(report) == [
        "5 things could not connect",
        "15 messages were due but not published",
    ]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"connections": {"things_failed": 2}}, "2 things could not connect"),
        (
            {"messages": {"published": 27, "acked": 27, "unsent": 3}},
            "3 messages were due but not published",
        ),
        ({"messages": {"acked": 26, "failed": 4}}, "4 messages failed (not acknowledged)"),
        (
            {"workers": {"count": 2, "lost": ["worker 2 of 2 exited with code -9"]}},
            "the measurement is incomplete: worker 2 of 2 exited with code -9",
        ),
    ],
    ids=["never-connected", "unsent", "not-acknowledged", "lost-worker"],
)
def test_each_kind_of_send_problem(changes: dict[str, dict[str, Any]], problem: str) -> None:
    assert send_problems(send_report(**changes)) == [problem]


def test_lost_workers_are_one_problem() -> None:
    lost = ["worker 1 of 3 exited with code -9", "worker 3 of 3 exited with code 1"]
    assert send_problems(send_report(workers={"count": 3, "lost": lost})) == [
        "the measurement is incomplete: worker 1 of 3 exited with code -9; "
        "worker 3 of 3 exited with code 1"
    ]


def test_run_adds_the_certificates_create_could_not_resolve() -> None:
    warning = "1 certificate creation(s) were interrupted and 2 unattached recent certificates"
    assert send_problems(CLEAN_SEND, unresolved=[warning]) == [
        f"create left a certificate unresolved: {warning}"
    ]


def test_every_problem_of_a_report_in_a_fixed_order() -> None:
    report = send_report(
        messages={"published": 20, "acked": 18, "failed": 2, "unsent": 10},
        connections={"things_failed": 1},
        workers={"count": 2, "lost": ["worker 2 of 2 exited with code 1"]},
    )
    assert send_problems(report, unresolved=["a certificate"]) == [
        "1 things could not connect",
        "10 messages were due but not published",
        "2 messages failed (not acknowledged)",
        "the measurement is incomplete: worker 2 of 2 exited with code 1",
        "create left a certificate unresolved: a certificate",
    ]


def test_subscribe_fails_only_on_subscribers_that_never_connected() -> None:
    report: dict[str, Any] = {
        "command": "subscribe",
        "messages": {"qos": 1, "received": 10, "unique": 9, "lost": 3, "duplicates": 1},
        "connections": {"attempted": 3, "succeeded": 3, "failed": 0, "things_failed": 0},
    }
    assert subscribe_problems(report) == []  # loss is measured, a threshold judges it
    report["connections"]["things_failed"] = 2
    assert subscribe_problems(report) == ["2 subscribers could not connect"]
