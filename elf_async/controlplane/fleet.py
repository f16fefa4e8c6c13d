"""A fleet's identity and names, and its least-privilege policy: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from elf_async.shards import Shard

FLEET_ATTRIBUTE = "elf_fleet"
INDEX_WIDTH = 5  # elf-ab12cd34-00042: sortable up to 99,999 things
_FLEET_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
FLEET_ID_LENGTH = 8
_THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]+$")
MAX_THING_NAME = 128
# Ledger meta: how the fleet's policy scopes topics.
TOPIC_SCOPE_KEY = "topic_scope"
_THING = "${iot:Connection.Thing.ThingName}"  # the policy variable: the connection's thing
PER_THING = "thing"
SHARED = "shared"
# A watcher (`subscribe`) connects with its thing's certificate as `<thing>-watch`: a send as
# the thing keeps its own client id, and one client id holds one connection. The ledger meta
# says whether the fleet's policy allows these ids (a fleet from before them does not).
WATCH_SUFFIX = "-watch"
WATCH_IDS_KEY = "watch_ids"
# Ledger meta: how the fleet's devices prove who they are (`create --identity`). A `thing`
# fleet has one registry thing and one certificate per device; a `shared` fleet has no things,
# one certificate that every device connects with under its own client id, and its device
# count in the meta (no ledger row per device).
IDENTITY_KEY = "identity"
DEVICES_KEY = "devices"
THING_IDENTITY = "thing"
SHARED_IDENTITY = "shared"
IDENTITIES = (THING_IDENTITY, SHARED_IDENTITY)
_CLIENT = "${iot:ClientId}"  # the policy variable of a shared identity: the connection's id
# The command controller (`create --controller`, `send --commands`): its own certificate and
# policy, connecting as `<prefix>-controller`; it publishes to every device's command topic
# and reads their replies, nothing else.
CONTROLLER_SUFFIX = "-controller"
COMMAND_LEVEL = "cmd"  # <root>/<device>/cmd; replies on <root>/<device>/cmd/reply
REPLY_LEVEL = "reply"
# Ledger meta of a shard's state dir: which shard (I/N) and how many things the whole fleet has.
SHARD_KEY = "shard"
FLEET_SIZE_KEY = "fleet_size"


def new_fleet_id() -> str:
    """8 random characters: two users in one account never collide (36^8 ≈ 2.8e12)."""
    return "".join(secrets.choice(_FLEET_ID_ALPHABET) for _ in range(FLEET_ID_LENGTH))


def fleet_id_problem(fleet_id: str) -> str | None:
    """Why `fleet_id` cannot name a fleet (it names the policy and the default prefix too),
    or None: the shape `new_fleet_id` makes."""
    if len(fleet_id) == FLEET_ID_LENGTH and all(c in _FLEET_ID_ALPHABET for c in fleet_id):
        return None
    return (
        f"--fleet-id {fleet_id!r}: a fleet id is {FLEET_ID_LENGTH} lower-case letters and "
        "digits (example: load0001)"
    )


def fleet_id_of_run(run_id: str) -> str:
    """The fleet id every shard of one run derives alike from the run's id (a CI run number,
    a Batch job id): a digest, so any text gives a valid, well-spread id."""
    digest = int.from_bytes(hashlib.sha256(run_id.encode()).digest(), "big")
    chars = []
    for _ in range(FLEET_ID_LENGTH):
        digest, rest = divmod(digest, len(_FLEET_ID_ALPHABET))
        chars.append(_FLEET_ID_ALPHABET[rest])
    return "".join(chars)


def default_prefix(fleet_id: str) -> str:
    return f"elf-{fleet_id}"


def device_name(prefix: str, index: int) -> str:
    """The name (and client id) of a fleet's device: a thing's name, or a virtual device's."""
    return f"{prefix}-{index:0{INDEX_WIDTH}d}"


def shared_identity_name(prefix: str) -> str:
    """The ledger row (and key and certificate files) of a shared fleet's one certificate: no
    device has this name (theirs end in digits)."""
    return f"{prefix}-shared"


def controller_name(prefix: str) -> str:
    """The ledger row, key files and client id of the fleet's command controller (`create
    --controller`): like a shared identity's, no device has this name."""
    return f"{prefix}{CONTROLLER_SUFFIX}"


def is_controller(name: str) -> bool:
    """Whether a ledger row is a controller's (its policy is the controller policy)."""
    return name.endswith(CONTROLLER_SUFFIX)


def controller_policy_name(fleet_id: str) -> str:
    """Derived from the fleet id alone, like the fleet policy's, so `clean --fleet ID` finds it."""
    return f"elf-{fleet_id}-controller-policy"


def identity_mode(meta: Mapping[str, str]) -> str:
    """`thing` or `shared`; a fleet from before the choice existed has things."""
    return meta.get(IDENTITY_KEY, THING_IDENTITY)


def policy_name(fleet_id: str) -> str:
    """Derived from the fleet id alone, so `clean --fleet ID` finds it without a ledger."""
    return f"elf-{fleet_id}-policy"


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot start thing names, or None when it can."""
    if not _THING_NAME.match(prefix):
        return f"--prefix {prefix!r}: thing names allow only letters, digits, ':', '_' and '-'"
    if len(prefix) + 1 + INDEX_WIDTH > MAX_THING_NAME:
        return (
            f"--prefix {prefix!r} is too long: thing names have at most {MAX_THING_NAME} characters"
        )
    return None


def topic_root_problem(topic_root: str) -> str | None:
    if not topic_root or any(c in topic_root for c in "#+*?") or topic_root.startswith(("$", "/")):
        return f"--topic-root {topic_root!r}: use plain topic levels such as 'elf' or 'load/test'"
    return None


POLICY_LIMIT = 2048  # non-whitespace characters AWS IoT allows in a policy document


def policy_problem(
    *, topic_root: str, prefix: str, shared_topics: bool, shared_identity: bool = False
) -> str | None:
    """Why the fleet policy for this root and prefix would be refused by AWS IoT (too long),
    or None. Sized for the longest region and account names."""
    size = len(
        policy_document(
            region="ap-southeast-5",
            account="123456789012",
            topic_root=topic_root,
            shared_topics=shared_topics,
            prefix=prefix,
            shared_identity=shared_identity,
        )
    )
    if size <= POLICY_LIMIT:
        return None
    return (
        f"--topic-root {topic_root!r} and --prefix {prefix!r} make the fleet policy {size} "
        f"characters; AWS IoT allows {POLICY_LIMIT}: use a shorter topic root or prefix"
    )


def per_thing_topics(meta: Mapping[str, str]) -> bool:
    """Whether the fleet's policy scopes topics per thing (the default) or shares its root
    (``create --shared-topics``). A fleet from before the choice existed shares its root."""
    return meta.get(TOPIC_SCOPE_KEY, SHARED) == PER_THING


def watch_client_id(thing: str) -> str:
    return f"{thing}{WATCH_SUFFIX}"


def allows_watch_ids(meta: Mapping[str, str]) -> bool:
    """Whether the fleet's policy lets its certificates connect as watchers."""
    return meta.get(WATCH_IDS_KEY) == "yes"


def policy_document(
    *,
    region: str,
    account: str,
    topic_root: str,
    shared_topics: bool,
    prefix: str,
    shared_identity: bool = False,
) -> str:
    """The fleet's least-privilege policy: a client may connect only as its own attached thing,
    and publish, receive and subscribe only under ``<root>/<its thing name>`` (the policy
    variable resolves through the certificate's thing), or anywhere under ``<root>/`` with
    `shared_topics`, where any thing may publish as, or read, any other; and, either way, on
    its own thing's shadow topics (``$aws/things/<its thing name>/shadow/...``, named shadows
    included). elf_async.dataplane.topics.outside_policy mirrors this for the warnings.

    A watcher connects as ``<prefix>-…-watch`` (`watch_client_id`), which names no thing, so
    the thing variables do not resolve for it: its statements name the fleet's watcher ids,
    and let such a connection subscribe to and receive anything under ``<root>/``, directly or
    as a member of a shared subscription (``$share/<group>/<root>/...``, `subscribe
    --shared`), never publish."""
    arn = f"arn:aws:iot:{region}:{account}"
    root = topic_root.strip("/")
    watchers = f"{prefix}-*{WATCH_SUFFIX}"
    only_watchers = {"StringLike": {"iot:ClientId": watchers}}
    who = _CLIENT if shared_identity else _THING
    if shared_topics:
        topics = [f"{root}/*"]
    else:
        own = f"{root}/{who}"
        topics = [own, f"{own}/*"]
    connect: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{prefix}-*"}
    ]
    if not shared_identity:
        topics.append(f"$aws/things/{_THING}/shadow/*")
        connect = [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{_THING}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{watchers}"},
        ]
    document: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [
            connect[0],
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [f"{arn}:topic/{topic}" for topic in topics],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{topic}" for topic in topics],
            },
            *connect[1:],
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": f"{arn}:topic/{root}/*",
                "Condition": only_watchers,
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    f"{arn}:topicfilter/{root}/*",
                    f"{arn}:topicfilter/$share/*/{root}/*",
                ],
                "Condition": only_watchers,
            },
        ],
    }
    return json.dumps(document, separators=(",", ":"))


def controller_policy_document(*, region: str, account: str, topic_root: str, prefix: str) -> str:
    """The controller's least-privilege policy: connect as ``<prefix>-controller`` only,
    publish to ``<root>/<any device>/cmd``, subscribe to ``<root>/+/cmd/reply`` and receive
    the replies; no other topic. The devices' side is the fleet policy's: a device's own
    ``<root>/<device>/...`` (or the shared root) holds its command topic and its reply."""
    arn = f"arn:aws:iot:{region}:{account}"
    root = topic_root.strip("/")
    reply = f"{COMMAND_LEVEL}/{REPLY_LEVEL}"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{controller_name(prefix)}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": f"{arn}:topic/{root}/*/{COMMAND_LEVEL}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": f"{arn}:topicfilter/{root}/+/{reply}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": f"{arn}:topic/{root}/*/{reply}",
            },
        ],
    }
    return json.dumps(document, separators=(",", ":"))


def recorded_shard(meta: Mapping[str, str]) -> tuple[Shard, int] | None:
    """The shard a state dir's fleet was created as, with the whole fleet's size, or None."""
    if SHARD_KEY not in meta or FLEET_SIZE_KEY not in meta:
        return None
    index, _, count = meta[SHARD_KEY].partition("/")
    return Shard(int(index), int(count)), int(meta[FLEET_SIZE_KEY])
