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
    assert not outside_policy("elf/thing-1", "elf", thing=None)
    assert not outside_policy("elf/thing-2/x", "elf", thing=None)
    assert outside_policy("other/thing-1", "elf", thing=None)
    assert outside_policy("elfish/x", "elf", thing=None)
    assert outside_policy("elf", "elf", thing=None)  # the policy allows elf/*, not elf
    assert not outside_policy("$aws/things/t/shadow/update", "elf", thing=None)


def test_outside_a_per_thing_policy() -> None:
    assert not outside_policy("elf/t1", "elf", thing="t1")
    assert not outside_policy("elf/t1/telemetry", "elf", thing="t1")
    assert not outside_policy("elf/t1/#", "elf", thing="t1")  # a filter, read literally
    assert outside_policy("elf/t2", "elf", thing="t1")  # another thing's topic
    assert outside_policy("elf/t10", "elf", thing="t1")
    assert outside_policy("elf/#", "elf", thing="t1")
    assert outside_policy("elf/+/telemetry", "elf", thing="t1")
    assert not outside_policy("$aws/things/t1/shadow/update", "elf", thing="t1")
