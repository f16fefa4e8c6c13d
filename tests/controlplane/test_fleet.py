"""The fleet policy: what a thing's connection may do, read the way AWS IoT evaluates it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from elf_async.controlplane.fleet import (
    INDEX_WIDTH,
    MAX_THING_NAME,
    controller_policy_document,
    policy_document,
    policy_problem,
    prefix_problem,
    topic_root_problem,
)

ARN = "arn:aws:iot:us-west-2:123456789012"
THING_VARIABLE = "${iot:Connection.Thing.ThingName}"
CLIENT_VARIABLE = "${iot:ClientId}"


def allows(
    document: dict[str, Any], action: str, resource: str, thing: str | None, client: str = ""
) -> bool:
    """IAM-style evaluation of our Allow statements for a connection with client id `client`
    (default: `thing`): `*` and `?` wildcards; the thing-name policy variable and the
    IsAttached condition resolve only for a connection whose client id names its attached
    `thing` (AttachThingPrincipal's non-exclusive association), None for any other client id;
    StringLike on iot:ClientId matches the client id."""
    client = client or (thing or "")
    for statement in document["Statement"]:
        actions = statement["Action"]
        if action not in ([actions] if isinstance(actions, str) else actions):
            continue
        condition = statement.get("Condition", {})
        if condition.get("Bool") == {"iot:Connection.Thing.IsAttached": "true"} and thing is None:
            continue
        like = condition.get("StringLike", {}).get("iot:ClientId")
        if like is not None and not _matches(like, client):
            continue
        resources = statement["Resource"]
        for pattern in [resources] if isinstance(resources, str) else resources:
            if THING_VARIABLE in pattern and thing is None:
                continue
            pattern = pattern.replace(CLIENT_VARIABLE, client)
            if _matches(pattern.replace(THING_VARIABLE, thing or ""), resource):
                return True
    return False


def _matches(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text) is not None


def policy(
    *, shared_topics: bool, root: str = "elf", shared_identity: bool = False
) -> dict[str, Any]:
    text = policy_document(
        region="us-west-2",
        account="123456789012",
        topic_root=root,
        shared_topics=shared_topics,
        prefix="elf-x",
        shared_identity=shared_identity,
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


@pytest.mark.parametrize("shared", [False, True])
def test_a_watcher_connects_with_its_own_id_and_only_reads(shared: bool) -> None:
    """`subscribe` connects as `<thing>-watch`, which names no thing: it may connect as a
    watcher of this fleet, subscribe to and receive anything under the root, and publish
    nothing more than the policy lets anyone (nothing per thing, the root when shared)."""
    document = policy(shared_topics=shared)
    watcher = "elf-x-00001-watch"

    def may(action: str, resource: str, client: str = watcher) -> bool:
        return allows(document, action, f"{ARN}:{resource}", None, client)

    assert may("iot:Connect", f"client/{watcher}")
    assert not may("iot:Connect", "client/elf-y-00001-watch", "elf-y-00001-watch")  # another fleet
    assert may("iot:Subscribe", "topicfilter/elf/elf-x-00002")
    assert may("iot:Subscribe", "topicfilter/elf/#")
    assert may("iot:Subscribe", "topicfilter/$share/g/elf/#")  # subscribe --shared g
    assert not may("iot:Subscribe", "topicfilter/$share/g/other/#")
    assert may("iot:Receive", "topic/elf/elf-x-00002/telemetry")
    assert may("iot:Publish", "topic/elf/elf-x-00001") == shared  # shared: anyone may
    assert not may("iot:Subscribe", "topicfilter/other/t1")


def test_a_thing_connected_as_itself_gains_nothing_from_the_watchers_statements() -> None:
    document = policy(shared_topics=False)
    assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/elf/t2", "t1")
    assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/$share/g/elf/t2", "t1")
    assert not allows(document, "iot:Receive", f"{ARN}:topic/elf/t2", "t1")


def test_nothing_else_is_allowed() -> None:
    document = policy(shared_topics=False)
    assert {s["Effect"] for s in document["Statement"]} == {"Allow"}
    actions = [s["Action"] for s in document["Statement"]]
    assert actions == [
        "iot:Connect",
        ["iot:Publish", "iot:Receive"],
        "iot:Subscribe",
        "iot:Connect",  # watchers
        "iot:Receive",
        "iot:Subscribe",
    ]
    assert ":*" not in json.dumps(document)


@pytest.mark.parametrize("shared", [False, True])
def test_a_policy_too_long_for_aws_is_refused_before_it_is_made(shared: bool) -> None:
    """AWS IoT refuses a policy over 2048 characters: a topic root as long as a whole topic
    (256 bytes) makes one; typical roots with the longest prefix do not."""
    longest_prefix = "p" * (MAX_THING_NAME - 1 - INDEX_WIDTH)
    for root in ("elf", "load/test", "fleet/" + "x" * 20):
        assert policy_problem(topic_root=root, prefix=longest_prefix, shared_topics=shared) is None
    root = "/".join(["level"] * 7) + "/" + "x" * (256 - 42)
    problem = policy_problem(topic_root=root, prefix="elf-k3v9x2ab", shared_topics=shared)
    assert problem is not None
    assert "AWS IoT allows 2048" in problem
    for size in (10, 40, 80, 160, 256):
        text = policy_document(
            region="ap-southeast-5",
            account="123456789012",
            topic_root="r" * size,
            shared_topics=shared,
            prefix=longest_prefix,
        )
        fits = len(re.sub(r"\s", "", text)) <= 2048
        problem = policy_problem(topic_root="r" * size, prefix=longest_prefix, shared_topics=shared)
        assert fits == (problem is None), size


def test_name_checks() -> None:
    assert prefix_problem("elf-load_1:a") is None
    assert prefix_problem("bad name") is not None
    assert prefix_problem("x" * 130) is not None
    assert topic_root_problem("load/test") is None
    assert topic_root_problem("elf/#") is not None


# `create --identity shared`: one certificate, no things; the client id is all a connection
# proves, so the policy allows exactly the fleet's client ids, and scopes topics by them.


@pytest.mark.parametrize("shared_topics", [False, True])
def test_a_shared_identity_connects_only_with_a_client_id_of_the_prefix(
    shared_topics: bool,
) -> None:
    document = policy(shared_topics=shared_topics, shared_identity=True)
    for client in ("elf-x-00001", "elf-x-99999", "elf-x-00001-watch"):
        assert allows(document, "iot:Connect", f"{ARN}:client/{client}", None, client), client
    for client in ("otherprefix-1", "elf-x", "elf-xy-00001", "elf-x_00001", "elf-y-00001", "x"):
        assert not allows(document, "iot:Connect", f"{ARN}:client/{client}", None, client), client
    text = json.dumps(document)
    assert "Thing" not in text  # no thing variable, condition or shadow: there are no things
    assert "$aws/" not in text


def test_a_shared_identity_scopes_topics_by_client_id() -> None:
    document = policy(shared_topics=False, shared_identity=True)
    me = "elf-x-00001"
    for topic in (f"elf/{me}", f"elf/{me}/telemetry"):
        for action in ("iot:Publish", "iot:Receive"):
            assert allows(document, action, f"{ARN}:topic/{topic}", None, me), topic
        assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{topic}", None, me)
    for topic in ("elf/elf-x-00002", "elf/elf-x-000011", "elf", "other/elf-x-00001"):
        assert not allows(document, "iot:Publish", f"{ARN}:topic/{topic}", None, me), topic
        assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/{topic}", None, me)
    shared = policy(shared_topics=True, shared_identity=True)
    assert allows(shared, "iot:Publish", f"{ARN}:topic/elf/elf-x-00002", None, me)
    assert not allows(shared, "iot:Publish", f"{ARN}:topic/other/x", None, me)


def test_a_shared_identitys_watcher_still_reads_the_root_and_publishes_nowhere_else() -> None:
    document = policy(shared_topics=False, shared_identity=True)
    watcher = "elf-x-00001-watch"
    assert allows(document, "iot:Subscribe", f"{ARN}:topicfilter/elf/elf-x-00001", None, watcher)
    assert allows(document, "iot:Receive", f"{ARN}:topic/elf/elf-x-00001", None, watcher)
    assert not allows(document, "iot:Publish", f"{ARN}:topic/elf/elf-x-00001", None, watcher)
    device = "elf-x-00001"
    assert not allows(document, "iot:Subscribe", f"{ARN}:topicfilter/elf/#", None, device)


def test_a_shared_identitys_policy_fits_aws_limit_or_is_refused() -> None:
    assert policy_problem(topic_root="elf", prefix="elf-x", shared_topics=False,
                          shared_identity=True) is None  # fmt: skip
    problem = policy_problem(
        topic_root="t" * 300, prefix="p" * 100, shared_topics=False, shared_identity=True
    )
    assert problem is not None
    assert "AWS IoT allows 2048" in problem


def controller_policy(root: str = "elf") -> dict[str, Any]:
    text = controller_policy_document(
        region="us-west-2", account="123456789012", topic_root=root, prefix="elf-x"
    )
    assert len(re.sub(r"\s", "", text)) <= 2048
    return dict(json.loads(text))


def test_the_controller_publishes_commands_and_reads_replies_only() -> None:
    """`create --controller`: connect as <prefix>-controller only, publish exactly the command
    topics, subscribe to and receive exactly the replies."""
    document = controller_policy()
    me = "elf-x-controller"

    def can(action: str, resource: str, client: str = me) -> bool:
        return allows(document, action, f"{ARN}:{resource}", None, client)

    assert can("iot:Connect", f"client/{me}")
    for client in ("elf-x-00001", "elf-x-controller2", "elf-x-controller-watch", "other"):
        assert not can("iot:Connect", f"client/{client}", client), client
    for device in ("elf-x-00001", "elf-x-99999"):
        assert can("iot:Publish", f"topic/elf/{device}/cmd")
        assert not can("iot:Publish", f"topic/elf/{device}/cmd/reply")
        assert not can("iot:Publish", f"topic/elf/{device}")
        assert can("iot:Receive", f"topic/elf/{device}/cmd/reply")
        assert not can("iot:Receive", f"topic/elf/{device}/cmd")
        assert not can("iot:Receive", f"topic/elf/{device}")
        assert not can("iot:Subscribe", f"topicfilter/elf/{device}/cmd")
    assert can("iot:Subscribe", "topicfilter/elf/+/cmd/reply")
    for topic_filter in ("elf/#", "elf/+/cmd", "#", "elf/+/cmd/#"):
        assert not can("iot:Subscribe", f"topicfilter/{topic_filter}"), topic_filter
    assert not can("iot:Publish", "topic/other/elf-x-00001/cmd")
    assert not can("iot:Publish", "topic/$aws/things/elf-x-00001/shadow/update")


@pytest.mark.parametrize("shared_identity", [False, True])
@pytest.mark.parametrize("shared_topics", [False, True])
def test_a_device_reads_its_commands_and_publishes_its_replies(
    shared_topics: bool, shared_identity: bool
) -> None:
    """The fleet policy holds a device's side of the commands: subscribe to and receive its
    own `<root>/<device>/cmd`, publish its `<root>/<device>/cmd/reply`; per-thing topics keep
    it off another device's commands."""
    document = policy(shared_topics=shared_topics, shared_identity=shared_identity)
    me = "elf-x-00001"
    thing = None if shared_identity else me

    def can(action: str, resource: str) -> bool:
        return allows(document, action, f"{ARN}:{resource}", thing, me)

    assert can("iot:Subscribe", f"topicfilter/elf/{me}/cmd")
    assert can("iot:Receive", f"topic/elf/{me}/cmd")
    assert can("iot:Publish", f"topic/elf/{me}/cmd/reply")
    other = "elf-x-00002"
    assert can("iot:Subscribe", f"topicfilter/elf/{other}/cmd") == shared_topics
    assert can("iot:Receive", f"topic/elf/{other}/cmd") == shared_topics
