"""Topic templates and the limits AWS IoT puts on topics."""

from __future__ import annotations

import pytest

from elf_async.dataplane.topics import TopicTemplate, outside_policy, validate_topic
from elf_async.errors import UsageError


def test_placeholders_render_per_thing() -> None:
    template = TopicTemplate("elf/{fleet}/{index}/{thing}", fleet="f1")
    assert template.check("elf-0003", 3) == "elf/f1/3/elf-0003"


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        ("elf/+", "wildcards"),
        ("elf/#", "wildcards"),
        ("a/" * 8 + "x", "slashes"),
        ("x" * 257, "bytes"),
        ("$SYS/x", "reserved"),
    ],
)
def test_refused_topics(topic: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        validate_topic(topic)


def test_rules_prefix_does_not_count_as_slashes() -> None:
    validate_topic("$aws/rules/my_rule/a/b/c/d/e/f/g/h")


def test_unknown_placeholder_and_broken_braces() -> None:
    with pytest.raises(UsageError, match="unknown placeholder"):
        TopicTemplate("elf/{name}", fleet="f")
    with pytest.raises(UsageError, match="--topic"):
        TopicTemplate("elf/{thing", fleet="f")


def test_filters_allow_whole_level_wildcards_only() -> None:
    validate_topic("elf/+/x/#", filter=True)
    with pytest.raises(UsageError, match="whole level"):
        validate_topic("elf/a+", filter=True)
    with pytest.raises(UsageError, match="last level"):
        validate_topic("elf/#/x", filter=True)


def test_outside_a_shared_policy() -> None:
    def outside(topic: str) -> bool:
        return outside_policy(topic, "elf", thing="t1", shared=True)

    assert not outside("elf/thing-1")
    assert not outside("elf/thing-2/x")
    assert outside("other/thing-1")
    assert outside("elfish/x")
    assert outside("elf")  # the policy allows elf/*, not elf


def test_outside_a_per_thing_policy() -> None:
    def outside(topic: str) -> bool:
        return outside_policy(topic, "elf", thing="t1", shared=False)

    assert not outside("elf/t1")
    assert not outside("elf/t1/telemetry")
    assert not outside("elf/t1/#")  # a filter, read literally
    assert outside("elf/t2")  # another thing's topic
    assert outside("elf/t10")
    assert outside("elf/#")
    assert outside("elf/+/telemetry")


@pytest.mark.parametrize("shared", [False, True])
def test_only_the_things_own_shadow_among_aws_topics(shared: bool) -> None:
    """The policy allows a thing its own shadow topics, whatever the scope; no other $aws/."""

    def outside(topic: str) -> bool:
        return outside_policy(topic, "elf", thing="t1", shared=shared)

    for own in ("update", "update/accepted", "get", "name/config/update", "#"):
        assert not outside(f"$aws/things/t1/shadow/{own}"), own
    for other in (
        "$aws/things/t2/shadow/update",  # another thing's shadow
        "$aws/things/t10/shadow/update",
        "$aws/things/+/shadow/update",  # a filter is read literally
        "$aws/things/t1/shadow",
        "$aws/things/t1/jobs/notify",
        "$aws/rules/my_rule/elf/t1",
        "$aws/events/presence/connected/t1",
    ):
        assert outside(other), other


def test_a_shared_identity_has_no_shadow_topics() -> None:
    """`create --identity shared` makes no things: its policy allows no shadow topic."""
    for shared in (False, True):
        assert outside_policy("$aws/things/t1/shadow/update", "elf", thing="t1", shared=shared,
                              shadows=False)  # fmt: skip
        assert not outside_policy("elf/t1", "elf", thing="t1", shared=shared, shadows=False)
