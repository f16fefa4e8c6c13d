"""The verdicts of send, run and subscribe (elf_async.report.verdict): pure functions over a
report."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from elf_async.report.thresholds import evaluate, parse
from elf_async.report.verdict import (
    judge_run,
    judge_send,
    judge_subscribe,
    send_problems,
    subscribe_problems,
)

CLEAN_SEND: dict[str, Any] = {
    "command": "send",
    "outcome": "completed",
    "rate": {"target_per_s": 10.0, "per_thing_per_s": 5.0, "achieved_per_s": 10.0},
    "latency_ms": {
        "ack": {"count": 30, "p50": 0.8, "p99": 1.234},
        "lag": {"count": 30, "p50": 0.5, "p99": 0.9},
    },
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
        "takeovers": 1,  # one connection closed right after it opened: not yet a takeover
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
        (
            {"connections": {"takeovers": 12}},
            "session takeover: the broker closed 12 connections right after they reopened, "
            "because another client connected with the same client id (a send or subscribe on "
            "the same things in another process?)",
        ),
    ],
    ids=["never-connected", "unsent", "not-acknowledged", "lost-worker", "takeover"],
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
        "connections": {
            "attempted": 3,
            "succeeded": 3,
            "failed": 0,
            "takeovers": 0,
            "things_failed": 0,
        },
    }
    assert subscribe_problems(report) == []  # loss is measured, a threshold judges it
    report["connections"]["things_failed"] = 2
    assert subscribe_problems(report) == ["2 subscribers could not connect"]
    report["connections"]["takeovers"] = 2
    assert subscribe_problems(report)[0].startswith("session takeover: the broker closed 2 ")


def test_the_verdict_line_of_a_send_that_passed_gives_its_figures() -> None:
    judgement = judge_send(CLEAN_SEND)
    assert judgement.passed
    assert judgement.line() == (
        "send passed: 30 of 30 messages acknowledged, 10 of 10 msg/s achieved, ack p99 1.23 ms"
    )


def test_the_verdict_line_at_qos_0_counts_published_messages_and_the_lag() -> None:
    report = send_report(messages={"qos": 0, "acked": None})
    assert judge_send(report).line() == (
        "send passed: 30 of 30 messages published, 10 of 10 msg/s achieved, lag p99 0.90 ms"
    )


def test_the_verdict_line_of_a_failed_send_says_why_then_the_figures() -> None:
    report = send_report(
        messages={"published": 27, "acked": 27, "unsent": 3},
        connections={"things_failed": 1},
        rate={"achieved_per_s": 9.0},
    )
    judgement = judge_send(report)
    assert not judgement.passed
    assert judgement.line() == (
        "send failed: 1 things could not connect; 3 messages were due but not published "
        "(27 of 30 messages acknowledged, 9 of 10 msg/s achieved, ack p99 1.23 ms)"
    )


def test_a_send_stopped_early_neither_passed_nor_failed() -> None:
    judgement = judge_send({**CLEAN_SEND, "outcome": "interrupted"})
    assert not judgement.passed
    assert judgement.line().startswith("send interrupted: stopped early (30 of 30 messages")


def test_the_verdict_line_of_a_run_adds_its_thresholds() -> None:
    held = evaluate([parse("ack.p99<250ms"), parse("error_rate<1%")], CLEAN_SEND)
    assert judge_run(CLEAN_SEND, failure=None, thresholds=held).line() == (
        "run passed: 30 of 30 messages acknowledged, 10 of 10 msg/s achieved, ack p99 1.23 ms, "
        "2 thresholds held"
    )
    missed = evaluate([parse("ack.p99<1ms"), parse("error_rate<1%")], CLEAN_SEND)
    assert judge_run(CLEAN_SEND, failure=None, thresholds=missed).line() == (
        "run failed: 1 of 2 thresholds failed: ack.p99<1ms: 1.234 ms (limit < 1 ms) "
        "(30 of 30 messages acknowledged, 10 of 10 msg/s achieved, ack p99 1.23 ms)"
    )


def test_a_failed_phase_of_a_run_wins_over_its_thresholds() -> None:
    missed = evaluate([parse("ack.p99<1ms")], CLEAN_SEND)
    line = judge_run(None, failure="create failed: 2 of 3 things failed", thresholds=missed).line()
    assert line == "run failed: create failed: 2 of 3 things failed"


def test_the_verdict_line_of_a_subscribe() -> None:
    report: dict[str, Any] = {
        "command": "subscribe",
        "outcome": "completed",
        "messages": {"received": 10, "lost": 3, "duplicates": 1, "unstamped": 2},
        "connections": {"things_failed": 0, "takeovers": 0},
        "latency_ms": {"end_to_end": {"count": 8, "p99": 12.34}},
    }
    assert judge_subscribe(report).line() == (
        "subscribe passed: 10 messages received (3 lost, 1 duplicates), "
        "2 unstamped (not judged), end-to-end p99 12.3 ms"
    )


COMMANDS = {
    "rate": 10.0, "due": 30, "sent": 30, "delivered": 30, "replied": 30, "lost": 0,
    "round_trip": {"count": 30, "p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 3.0, "max": 3.0,
                   "mean": 1.2},
    "error": None,
}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        ({}, []),
        ({"replied": 28, "lost": 2}, ["2 of 30 commands got no reply"]),
        (
            {"delivered": 29, "replied": 29, "lost": 1},
            ["1 commands never reached their device", "1 of 30 commands got no reply"],
        ),
        ({"due": 31}, ["1 commands were due but not sent"]),
        (
            {"sent": 0, "delivered": 0, "replied": 0, "error": "the controller could not connect"},
            ["the controller could not connect", "30 commands were due but not sent"],
        ),
    ],
    ids=["all-replied", "lost", "undelivered", "unsent", "no-controller"],
)
def test_commands_fail_the_send_unless_every_one_is_answered(
    changes: dict[str, Any], problems: list[str]
) -> None:
    report = send_report(commands={**COMMANDS, **changes})
    assert send_problems(report) == problems
    assert judge_send(report).passed == (not problems)
    if not problems:
        assert "30 of 30 commands replied, command round trip p99 3" in judge_send(report).line()
