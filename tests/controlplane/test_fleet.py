"""The fleet policy: what a thing's connection may do, read the way AWS IoT evaluates it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from elf_async.controlplane.fleet import policy_document, prefix_problem, topic_root_problem

ARN = "arn:aws:iot:us-west-2:123456789012"
THING_VARIABLE = "${iot:Connection.Thing.ThingName}"


def allows(document: dict[str, Any], action: str, resource: str, thing: str) -> bool:
    """IAM-style evaluation of our Allow statements: `*` and `?` wildcards, the thing-name
    policy variable resolved for a connection whose certificate is attached to `thing`."""
    for statement in document["Statement"]:
        actions = statement["Action"]
        if action not in ([actions] if isinstance(actions, str) else actions):
            continue
        resources = statement["Resource"]
        for pattern in [resources] if isinstance(resources, str) else resources:
            concrete = pattern.replace(THING_VARIABLE, thing)
            regex = "".join(
                ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in concrete
            )
            if re.fullmatch(regex, resource):
                return True
    return False


def policy(*, shared_topics: bool, root: str = "elf") -> dict[str, Any]:
    text = policy_document(
        region="us-west-2", account="123456789012", topic_root=root, shared_topics=shared_topics
    )
    assert len(re.sub(r"\s", "", text)) <= 2048  # AWS's limit on a policy document
    return dict(json.loads(text))


def test_connect_only_as_the_attached_thing() -> None:
    for shared in (False, True):
        document = policy(shared_topics=shared)
        connect = document["Statement"][0]
        assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
        assert allows(document, "iot:Connect", f"{ARN}:client/elf-1", "elf-1")
        assert not allows(document, "iot:Connect", f"{ARN}:client/elf-2", "elf-1")


@pytest.mark.parametrize("action", ["iot:Publish", "iot:Receive"])
def test_per_thing_by_default(action: str) -> None:
    document = policy(shared_topics=False)
    mine = ["elf/t1", "elf/t1/telemetry", "elf/t1/a/b"]
    others = ["elf/t2", "elf/t10", "elf/t1x", "elf", "elf/", "other/t1"]
    for topic in mine:
        assert allows(document, action, f"{ARN}:topic/{topic}", "t1"), topic
    for topic in others:
        assert not allows(document, action, f"{ARN}:topic/{topic}", "t1"), topic


def test_per_thing_subscriptions() -> None:
    document = policy(shared_topics=False)
    for topic_filter in ["elf/t1", "elf/t1/#", "elf/t1/+/x"]:
        assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{topic_filter}", "t1")
    for topic_filter in ["elf/#", "elf/+", "elf/t2/#", "#"]:
        assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{topic_filter}", "t1")
    # topics and filters are distinct resources
    assert not allows(document, "iot:Subscribe", f"{ARN}:topic/elf/t1", "t1")
    assert not allows(document, "iot:Publish", f"{ARN}:topicfilter/elf/t1", "t1")


def test_shared_topics_open_the_whole_root() -> None:
    document = policy(shared_topics=True, root="load/test")
    assert allows(document, "iot:Publish", f"{ARN}:topic/load/test/t2", "t1")
    assert allows(document, "iot:Receive", f"{ARN}:topic/load/test/any/thing", "t1")
    assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/load/test/#", "t1")
    assert not allows(document, "iot:Publish", f"{ARN}:topic/load/other", "t1")
    assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/#", "t1")


@pytest.mark.parametrize("shared", [False, True])
def test_a_thing_may_use_its_own_shadow_only(shared: bool) -> None:
    """Whatever the topic scope: the thing's own classic and named shadows, and no other
    $aws/ topic (another thing's shadow, rules, jobs)."""
    document = policy(shared_topics=shared)
    own = "$aws/things/t1/shadow"
    for action in ("iot:Publish", "iot:Receive"):
        for topic in (f"{own}/update", f"{own}/update/accepted", f"{own}/name/cfg/get"):
            assert allows(document, action, f"{ARN}:topic/{topic}", "t1"), topic
        for topic in (
            "$aws/things/t2/shadow/update",
            "$aws/things/t1x/shadow/update",
            "$aws/things/t1/jobs/notify",
            "$aws/rules/r/elf/t1",
        ):
            assert not allows(document, action, f"{ARN}:topic/{topic}", "t1"), topic
    assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{own}/update/#", "t1")
    assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{own}/name/+/get/accepted", "t1")
    for topic_filter in ("$aws/things/+/shadow/update", "$aws/things/t2/shadow/#", "$aws/#"):
        assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{topic_filter}", "t1")


def test_nothing_else_is_allowed() -> None:
    document = policy(shared_topics=False)
    assert {s["Effect"] for s in document["Statement"]} == {"Allow"}
    actions = [s["Action"] for s in document["Statement"]]
    assert actions == ["iot:Connect", ["iot:Publish", "iot:Receive"], "iot:Subscribe"]
    assert ":*" not in json.dumps(document)


@pytest.mark.parametrize("shared", [False, True])
def test_the_longest_root_stays_under_the_size_limit(shared: bool) -> None:
    """A root as long as a whole topic may be (256 bytes), in a region with a long name."""
    root = "/".join(["level"] * 7) + "/" + "x" * (256 - 42)
    assert len(root) == 256
    text = policy_document(
        region="ap-southeast-2", account="123456789012", topic_root=root, shared_topics=shared
    )
    assert len(re.sub(r"\s", "", text)) <= 2048  # AWS's limit on a policy document


def test_name_checks() -> None:
    assert prefix_problem("elf-load_1:a") is None
    assert prefix_problem("bad name") is not None
    assert prefix_problem("x" * 130) is not None
    assert topic_root_problem("load/test") is None
    assert topic_root_problem("elf/#") is not None
