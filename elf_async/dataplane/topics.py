"""Topic templates: placeholders, and the limits AWS IoT enforces on topic names."""

from __future__ import annotations

import re
import string

from elf_async.errors import UsageError

MAX_TOPIC_BYTES = 256
MAX_SLASHES = 7
PLACEHOLDERS = ("thing", "index", "fleet")
_RULES_PREFIX = re.compile(r"^\$aws/rules/[^/]+/")


class TopicTemplate:
    """A topic with ``{thing}``, ``{index}`` and ``{fleet}``, checked once, rendered per thing."""

    def __init__(self, template: str, *, fleet: str, filter: bool = False) -> None:
        self.template = template
        self.fleet = fleet
        self.filter = filter
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        except ValueError as exc:
            raise UsageError(f"--topic {template!r}: {exc}") from exc
        unknown = sorted(set(fields) - set(PLACEHOLDERS))
        if unknown:
            raise UsageError(
                f"--topic {template!r}: unknown placeholder {{{unknown[0]}}} "
                f"(use {', '.join('{' + p + '}' for p in PLACEHOLDERS)})"
            )
        if not template:
            raise UsageError("--topic must not be empty")

    def render(self, thing: str, index: int) -> str:
        return self.template.format(thing=thing, index=index, fleet=self.fleet)

    def check(self, thing: str, index: int) -> str:
        """Render for one thing and refuse what AWS IoT would refuse."""
        topic = self.render(thing, index)
        validate_topic(topic, filter=self.filter)
        return topic


def validate_topic(topic: str, *, filter: bool = False) -> None:
    """Wildcards (in a topic to publish), > 256 bytes, > 7 slashes, reserved ``$`` topics."""
    what = "topic filter" if filter else "topic"
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise UsageError(
            f"--topic: {what} {topic!r} is {len(topic.encode())} bytes; AWS IoT allows "
            f"{MAX_TOPIC_BYTES}"
        )
    if "\x00" in topic:
        raise UsageError(f"--topic: {what} {topic!r} contains a NUL character")
    if topic.startswith("$") and not topic.startswith("$aws/"):
        raise UsageError(f"--topic: {topic!r}: topics starting with $ are reserved (except $aws/)")
    slashes = _RULES_PREFIX.sub("", topic).count("/")
    if slashes > MAX_SLASHES:
        raise UsageError(
            f"--topic: {what} {topic!r} has {slashes} slashes; AWS IoT allows {MAX_SLASHES}"
        )
    levels = topic.split("/")
    if not filter:
        if "+" in topic or "#" in topic:
            raise UsageError(f"--topic: {topic!r}: wildcards (+, #) cannot be published to")
        return
    for position, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise UsageError(f"--topic: {topic!r}: a wildcard must be a whole level")
        if level == "#" and position != len(levels) - 1:
            raise UsageError(f"--topic: {topic!r}: # must be the last level")


def outside_policy(
    topic: str, root: str, *, thing: str, shared: bool, shadows: bool = True
) -> bool:
    """A topic (or a filter, read literally as AWS does) that the fleet's policy does not allow
    to `thing`'s connection: AWS IoT disconnects a client that publishes there and refuses
    the subscription. The policy (elf_async.controlplane.fleet.policy_document) allows
    ``<root>/<thing>`` and below, or with a `shared` policy anything under ``<root>/``; and
    either way the thing's own shadow topics, ``$aws/things/<thing>/shadow/...``. Nothing else:
    no other ``$aws/`` topic (rules, jobs, another thing's shadow). Without `shadows` (a
    shared-identity fleet has no things, hence no shadows) not even those."""
    if shadows and topic.startswith(f"$aws/things/{thing}/shadow/"):
        return False
    base = root.strip("/")
    if shared:
        return not topic.startswith(base + "/")
    own = f"{base}/{thing}"
    return not (topic == own or topic.startswith(own + "/"))
