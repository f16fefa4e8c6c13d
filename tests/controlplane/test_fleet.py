"""A fleet's names and its least-privilege policy."""

from __future__ import annotations

import json

from elf_async.controlplane.fleet import policy_document, prefix_problem, topic_root_problem


def test_policy_is_least_privilege() -> None:
    document = json.loads(
        policy_document(region="us-west-2", account="123456789012", topic_root="elf")
    )
    connect, publish, subscribe = document["Statement"]
    assert connect["Resource"].endswith(":client/${iot:Connection.Thing.ThingName}")
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    assert publish["Resource"] == "arn:aws:iot:us-west-2:123456789012:topic/elf/*"
    assert subscribe["Resource"] == "arn:aws:iot:us-west-2:123456789012:topicfilter/elf/*"
    assert len(json.dumps(document).replace(" ", "")) <= 2048


def test_name_checks() -> None:
    assert prefix_problem("elf-load_1:a") is None
    assert prefix_problem("bad name") is not None
    assert prefix_problem("x" * 130) is not None
    assert topic_root_problem("load/test") is None
    assert topic_root_problem("elf/#") is not None
