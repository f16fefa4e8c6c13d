"""The JSON report, schema ``elf-async/report/2``, as types: the one description of its layout.

`elf_async.report.document` builds these, `elf_async.report.verdict` and `thresholds` read
them (the metric names a threshold may use are this model's numeric fields), and the README's
report table is `readme_table()` (tests/report/test_model.py keeps them equal). A report is
JSON, so each part is a TypedDict whose fields carry a one-line description:
``Annotated[type, "description"]``, read back by `fields_of`. Renaming, removing or retyping a
field breaks the readers of a schema: that takes a new schema number. Version 2 added the
per-second latency columns of `series` and the encoded `histograms` (so that reports merge
exactly: `elf-async report merge`); readers accept both (`SCHEMAS`).

Counts are exact: ``acked <= published <= scheduled`` and ``unsent = scheduled - published``.
A thing that never connected owes its whole schedule (what fell due until the stop, when
stopped early): it counts in ``scheduled`` and ``unsent``. Whether the counts pass is decided
in elf_async.report.verdict.
"""

# No `from __future__ import annotations`: the TypedDicts' annotations are read at run time
# (Python 3.11 cannot tell NotRequired fields from postponed annotations).

import types
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Final,
    NotRequired,
    Required,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

SCHEMA: Final = "elf-async/report/2"
SCHEMAS: Final = ("elf-async/report/1", SCHEMA)  # what readers (report merge, compare) accept
HDR: Final = (
    "HDR histogram of µs (1 µs to 1 h, 3 significant digits) in its compressed base64 wire "
    "form (`HdrHistogram.encode`)"
)

# Common to every report.


class Fleet(TypedDict):
    fleet_id: Annotated[str | None, "the fleet's id (null when the ledger has none)"]
    things: Annotated[int, "things sending (send) or subscribers (subscribe)"]
    identity: NotRequired[
        Annotated[
            str,
            "thing (a certificate per thing) or shared (one certificate, no things: "
            "`create --identity shared`)",
        ]
    ]


class Broker(TypedDict):
    host: Annotated[str, "the MQTT endpoint's host name"]
    port: Annotated[int, "its TLS port"]
    alpn: Annotated[bool, "whether ALPN x-amzn-mqtt-ca was offered (port 443)"]


class Connections(TypedDict):
    attempted: Annotated[int, "CONNECT attempts, reconnections included"]
    succeeded: Annotated[int, "attempts that connected"]
    failed: Annotated[int, "attempts that failed, retried ones included"]
    reconnects: Annotated[int, "connections the broker dropped that were reopened"]
    reconnect_attempts: Annotated[int, "attempts to reopen them, failed ones included"]
    takeovers: Annotated[
        int,
        "reconnections the broker closed within 5 s of their CONNACK: another client connected "
        "with the same client id and took the session over (more than one fails the command)",
    ]
    things_failed: Annotated[int, "things (or subscribers) that never connected"]
    errors: Annotated[dict[str, int], "each failure reason and how often, most frequent first"]


class LatencySummary(TypedDict):
    count: Annotated[int, "durations recorded"]
    p50: Annotated[float | None, "median, ms (null when nothing was recorded, as below)"]
    p90: Annotated[float | None, "90th percentile, ms"]
    p99: Annotated[float | None, "99th percentile, ms"]
    p999: Annotated[float | None, "99.9th percentile, ms"]
    max: Annotated[float | None, "longest, ms"]
    mean: Annotated[float | None, "mean, ms"]


class Latency(TypedDict):
    connect: Annotated[LatencySummary, "a connection attempt's start to its CONNACK"]


class ReportHead(TypedDict):
    """What every report starts with, even a run's that never got to send."""

    schema: Annotated[str, f"`{SCHEMA}`"]
    command: Annotated[
        str, "`send` or `subscribe` (`run` writes a send report, or `run` if it never sent)"
    ]
    version: Annotated[str, "elf-async's version"]
    python: NotRequired[Annotated[str, "the Python version it ran on (v2)"]]
    outcome: Annotated[str, "`completed`, `interrupted` (Ctrl-C) or `terminated` (SIGTERM)"]
    started_at: Annotated[str, "ISO 8601 UTC"]
    ended_at: Annotated[str, "ISO 8601 UTC"]
    duration_s: Annotated[float, "seconds from start to end"]
    options: Annotated[dict[str, Any], "the options used"]


class Shards(TypedDict):
    count: Annotated[int, "shards the fleet was split into (`shard.count` of the reports)"]
    merged: Annotated[int, "shard reports merged"]
    missing: Annotated[int, "shards without a report (more than 0 fails the merge: exit 1)"]


class ShardPart(TypedDict):
    index: Annotated[int, "this shard, 0-based"]
    count: Annotated[int, "the fleet's shards"]


class StartInstant(TypedDict):
    at: Annotated[str, "the --start-at instant (ISO 8601 UTC)"]
    late_start_s: Annotated[
        float, "how long after it this process was connected and ready (0: in time)"
    ]


class CommonReport(ReportHead):
    fleet: Annotated[Fleet, "the fleet used; `things` sent (send) or subscribed (subscribe)"]
    endpoint: Annotated[Broker, "the broker used"]
    mqtt_version: NotRequired[Annotated[str, "the MQTT version spoken: `3.1.1` or `5` (--mqtt)"]]
    transport: NotRequired[
        Annotated[
            str,
            "how it connected: `mqtts+x509` (each thing's certificate), `wss+sigv4` (MQTT over "
            "WebSocket, SigV4-signed), `mqtts+custom` (a custom authorizer); absent before "
            "elf-async had the choice (then `mqtts+x509`)",
        ]
    ]
    connections: Annotated[
        Connections,
        "every CONNECT attempt, reconnections included; `errors` counts reasons (e.g. "
        "`UNKNOWN_CA`)",
    ]
    shards: NotRequired[
        Annotated[
            Shards,
            "a report made by `report merge`: the shards expected, merged and missing",
        ]
    ]
    shard: NotRequired[
        Annotated[ShardPart, "a sharded run (--shard I/N): which slice of the fleet this is"]
    ]
    start: NotRequired[
        Annotated[
            StartInstant,
            "a run started with --start-at: a late one sent the missed messages late (lag "
            "measured)",
        ]
    ]


# `send` (and `run`, whose send phase this is).


class SendMessages(TypedDict):
    qos: Annotated[int, "the QoS used, 0 or 1"]
    scheduled: Annotated[int, "messages due by the schedule, unconnected things' included"]
    published: Annotated[int, "messages written to the socket"]
    acked: Annotated[int | None, "messages the broker acknowledged (null at QoS 0)"]
    failed: Annotated[int, "QoS 1 messages never acknowledged"]
    unsent: Annotated[int, "messages due but never published"]
    retransmitted: Annotated[int, "messages sent again after a reconnect"]


class SendRate(TypedDict):
    target_per_s: Annotated[float, "messages per second the schedule asks of every thing"]
    per_thing_per_s: Annotated[float | None, "of one thing (null without things)"]
    achieved_per_s: Annotated[float | None, "published / publish_window_s (null if no window)"]
    publish_window_s: Annotated[float, "seconds the schedule ran, late catching up included"]


class SendLatency(Latency):
    ack: Annotated[LatencySummary, "PUBACK time - due time"]
    ack_from_send: Annotated[LatencySummary, "PUBACK time - send time"]
    lag: Annotated[LatencySummary, "send time - due time"]


class SendSecond(TypedDict):
    t: Annotated[float, "seconds since the start"]
    scheduled: Annotated[int, "messages that fell due in this second"]
    published: Annotated[int, "published in this second"]
    acked: Annotated[int, "acknowledged in this second"]
    failed: Annotated[int, "failed in this second (at the end)"]
    reconnects: Annotated[int, "reconnections in this second"]
    connected: Annotated[int, "connections open"]
    ack_p50_ms: NotRequired[
        Annotated[float | None, "median ack latency of this second's PUBACKs (null: none; v2)"]
    ]
    ack_p99_ms: NotRequired[Annotated[float | None, "their 99th percentile (v2)"]]
    lag_p50_ms: NotRequired[
        Annotated[float | None, "median lag of this second's publishes (null: none; v2)"]
    ]
    lag_p99_ms: NotRequired[Annotated[float | None, "their 99th percentile (v2)"]]
    target_connected: NotRequired[
        Annotated[int, "shaped send: the devices the stages plan connected at this second"]
    ]
    stage: NotRequired[
        Annotated[int | None, "shaped send: the stage that ran this second (null: none)"]
    ]


class SendSecondHistograms(TypedDict):
    ack: Annotated[str | None, "this second's ack latencies (null: none)"]
    lag: Annotated[str | None, "this second's lags (null: none)"]


class SendHistograms(TypedDict):
    connect: Annotated[str, "the whole run's connect times"]
    ack: Annotated[str, "its ack latencies"]
    ack_from_send: Annotated[str, "its PUBACK - send times"]
    lag: Annotated[str, "its lags"]
    seconds: Annotated[list[SendSecondHistograms], "one per `series` row, in the same order"]
    commands: NotRequired[Annotated[str, "`--commands`: the commands' round trips"]]


class SendThing(TypedDict):
    name: Annotated[str, "the thing"]
    topic: Annotated[str, "where it published"]
    scheduled: Annotated[int, "messages due by its schedule"]
    published: Annotated[int, "written to the socket"]
    acked: Annotated[int | None, "acknowledged (null at QoS 0)"]
    failed: Annotated[int, "never acknowledged"]
    unsent: Annotated[int, "due but never published"]
    reconnects: Annotated[int, "connections the broker dropped that were reopened"]
    error: Annotated[
        str | None,
        "why it never connected, or lost its connection and never got it back (or why its "
        "worker's counts are lost)",
    ]


class Commands(TypedDict):
    rate: Annotated[float, "commands per second asked for, across the fleet (--commands)"]
    due: Annotated[int, "commands due by the controller's open-loop schedule"]
    sent: Annotated[int, "published by the controller (QoS 1), to the devices in turn"]
    delivered: Annotated[int, "received by a device on its `<root>/<thing>/cmd`"]
    replied: Annotated[int, "whose reply on `<root>/<thing>/cmd/reply` reached the controller"]
    lost: Annotated[int, "sent and never replied to by the end of the drain"]
    round_trip: Annotated[LatencySummary, "the reply's arrival - the command's send time"]
    error: Annotated[
        str | None, "why the controller could not send, or devices could not subscribe"
    ]


class Workers(TypedDict):
    count: Annotated[int, "worker processes"]
    lost: Annotated[list[str], "why a worker's counts are missing, one line each"]


class AwsMetric(TypedDict):
    metric: Annotated[str, "the AWS/IoT metric, e.g. `PublishIn.Success`"]
    sum: Annotated[
        float | None,
        "the sum of its one-minute data points over the window; null: no data point (no data, "
        "which is not 0)",
    ]
    client: Annotated[
        int | None,
        "the client's own count of the same: `connections.succeeded` for Connect.Success, "
        "`messages.published + retransmitted` for PublishIn.Success; null for the throttles "
        "(the client cannot tell one)",
    ]


class AwsMetrics(TypedDict):
    namespace: Annotated[str, "`AWS/IoT`"]
    start: Annotated[str, "the window's first minute, ISO 8601 UTC"]
    end: Annotated[str, "the end of its last minute, ISO 8601 UTC"]
    waited_s: Annotated[
        float, "seconds waited after the run for AWS to publish (--cloudwatch-wait)"
    ]
    connect_success: Annotated[AwsMetric, "`Connect.Success`"]
    connect_throttle: Annotated[AwsMetric, "`Connect.Throttle`"]
    publish_in_success: Annotated[AwsMetric, "`PublishIn.Success`"]
    publish_in_throttle: Annotated[AwsMetric, "`PublishIn.Throttle`"]
    note: Annotated[str, "how to read them: the whole account counts, and what null means"]
    error: Annotated[str | None, "why CloudWatch could not be read (null: it was)"]


class SendStage(TypedDict):
    index: Annotated[int, "its place in --stages, from 0"]
    start_s: Annotated[float, "when it starts, in the series' seconds (`t`)"]
    end_s: Annotated[float, "when it ends, in the series' seconds"]
    devices: Annotated[list[int], "connected devices at its start and end (a ramp if they differ)"]
    rate: Annotated[list[float], "messages/s per connected device at its start and end"]
    group: NotRequired[
        Annotated[str, "a scenario's group whose devices it plans (`index`: in the group's)"]
    ]


class Storm(TypedDict):
    at_s: Annotated[float, "when every connection was dropped, seconds into the schedule"]
    dropped: Annotated[int, "connections dropped"]
    reconnected: Annotated[
        int,
        "of them, reconnected (through the connect budget; one whose window closed before it "
        "was back is not)",
    ]
    reconnect_s: Annotated[
        float | None,
        "from the drop to the last reconnect (null: one still due back never came)",
    ]
    connect_p99_ms: Annotated[float | None, "99th percentile, per client, of drop to CONNACK"]
    throttled: Annotated[
        int,
        "of the failed ones, those whose reason says throttled (AWS may just close: with "
        "--cloudwatch, aws_metrics has Connect.Throttle)",
    ]
    failed: Annotated[int, "reconnect attempts that failed until all were back"]


class Churn(TypedDict):
    per_min_percent: Annotated[float, "--churn: percent of the connected devices per minute"]
    seed: Annotated[int, "the random sample's seed"]
    disconnects: Annotated[int, "clean disconnects by the churn"]
    reconnects: Annotated[int, "their reconnects (at least 1 s after, per client ID)"]


class ScenarioGroup(TypedDict):
    name: Annotated[str, "the group's `name`"]
    things: Annotated[int, "its things (a contiguous slice of the fleet)"]
    qos: Annotated[int, "the QoS it published with"]
    per_thing_per_s: Annotated[float | None, "its rate per thing (null: no thing)"]
    planned: Annotated[int, "messages in its whole schedule"]
    scheduled: Annotated[int, "messages due by its schedule"]
    published: Annotated[int, "written to the socket"]
    acked: Annotated[int | None, "acknowledged (null at QoS 0)"]
    failed: Annotated[int, "never acknowledged"]
    unsent: Annotated[int, "due but never published"]


class Scenario(TypedDict):
    file: Annotated[str, "the --scenario file"]
    groups: Annotated[list[ScenarioGroup], "one row per `[[group]]`, in the file's order"]


class SendReport(CommonReport):
    latency_ms: Annotated[
        SendLatency,
        "HDR histograms in ms: connect (start of an attempt to CONNACK), ack (PUBACK - due "
        "time), ack_from_send (PUBACK - send time), lag (send - due time)",
    ]
    series: Annotated[
        list[SendSecond],
        "one row per second: `t` (seconds since the start), that second's counts, `connected`",
    ]
    messages: Annotated[
        SendMessages,
        "exact counts, `acked ≤ published ≤ scheduled`, `unsent = scheduled - published`; a "
        "thing that never connected owes its whole schedule (up to the stop when stopped "
        "early), so it counts in `scheduled` and `unsent`",
    ]
    rate: Annotated[
        SendRate,
        "the target counts every thing, connected or not (achieved is 0 when none connected)",
    ]
    things: Annotated[
        list[SendThing],
        "one row per thing, in fleet order; `error`: why it did not send all it owed",
    ]
    workers: NotRequired[
        Annotated[Workers, "`send --workers N` with N > 1: `lost` says whose counts are missing"]
    ]
    commands: NotRequired[
        Annotated[Commands, "`--commands`: command round trips cloud to device and back"]
    ]
    histograms: NotRequired[
        Annotated[
            SendHistograms,
            f"v2: the latencies as {HDR}, for the whole run and per second (`seconds`, one per "
            "`series` row; null: nothing recorded), so that reports merge exactly",
        ]
    ]
    reason_codes: NotRequired[
        Annotated[
            dict[str, int],
            "MQTT 5: the PUBACK reason codes of 0x80 or more (refused messages, counted in "
            "`failed`) and how often, e.g. `0x87 Not authorized`, most frequent first",
        ]
    ]
    aws_metrics: NotRequired[
        Annotated[
            AwsMetrics,
            "`--cloudwatch`: AWS/IoT's own sums over the run's whole minutes next to the "
            "client's counts; the account's other clients count too",
        ]
    ]
    stages: NotRequired[
        Annotated[
            list[SendStage],
            "a shaped send (--stages, --churn, --storm): the stages, with their boundaries",
        ]
    ]
    storm: NotRequired[Annotated[Storm | None, "--storm: the drop and the reconnect"]]
    churn: NotRequired[Annotated[Churn | None, "--churn: the devices cycled"]]
    scenario: NotRequired[
        Annotated[
            Scenario,
            "`--scenario` with `[[group]]`s: each group's counts (they add up to `messages`; "
            "with groups of both QoS, `messages.qos` is 1 and `acked` counts the QoS 1 ones)",
        ]
    ]


# `subscribe`.


class SubscribeMessages(TypedDict):
    qos: Annotated[int, "the QoS subscribed with, 0 or 1"]
    received: Annotated[int, "messages delivered, duplicates included"]
    unique: Annotated[int, "distinct sequence numbers received"]
    lost: Annotated[int, "sequence numbers missing between the first and the highest received"]
    duplicates: Annotated[int, "messages received again"]
    out_of_order: Annotated[int, "messages received after a higher sequence number"]
    unstamped: Annotated[int, "messages without elf-async's stamp (not judged)"]


class SubscribeRate(TypedDict):
    achieved_per_s: Annotated[float | None, "received per second of listening"]


class SubscribeLatency(Latency):
    end_to_end: Annotated[LatencySummary, "receive time - the message's `ts`"]


class SubscribeSecond(TypedDict):
    t: Annotated[float, "seconds since the start"]
    received: Annotated[int, "received in this second"]
    lost: Annotated[int, "newly missing sequence numbers"]
    duplicates: Annotated[int, "duplicates in this second"]
    connected: NotRequired[Annotated[int, "connections open (absent from the last row)"]]
    e2e_p50_ms: NotRequired[
        Annotated[float | None, "median end-to-end latency of this second (null: none; v2)"]
    ]
    e2e_p99_ms: NotRequired[Annotated[float | None, "its 99th percentile (v2)"]]


class SubscribeSecondHistograms(TypedDict):
    end_to_end: Annotated[str | None, "this second's end-to-end latencies (null: none)"]


class SubscribeHistograms(TypedDict):
    connect: Annotated[str, "the whole run's connect times"]
    end_to_end: Annotated[str, "its end-to-end latencies"]
    seconds: Annotated[list[SubscribeSecondHistograms], "one per `series` row, in the same order"]


class SubscribeThing(TypedDict):
    name: Annotated[str, "the sending thing (from the stamp; the topic when unstamped)"]
    received: Annotated[int, "its messages received"]
    unique: Annotated[int, "distinct sequence numbers"]
    lost: Annotated[int, "missing sequence numbers"]
    duplicates: Annotated[int, "received again"]
    out_of_order: Annotated[int, "received after a higher sequence number"]
    first_seq: NotRequired[
        Annotated[int, "a shared subscription member's first sequence number of the thing"]
    ]
    highest_seq: NotRequired[Annotated[int, "and its highest (to merge the group's loss)"]]


class Subscriber(TypedDict):
    name: Annotated[str, "its client id: `<thing>-watch`, or a thing's name with --client-offset"]
    topic: Annotated[str, "its topic filter"]
    received: Annotated[int, "messages it received"]
    reconnects: Annotated[int, "connections the broker dropped that were reopened"]
    error: Annotated[str | None, "why it never connected, or lost its connection for good"]


class SubscribeReport(CommonReport):
    latency_ms: Annotated[
        SubscribeLatency,
        "HDR histograms in ms: connect, end_to_end (receive time - the message's `ts`)",
    ]
    series: Annotated[
        list[SubscribeSecond],
        "one row per second: `t`, that second's counts, `connected` (not in the last row)",
    ]
    messages: Annotated[
        SubscribeMessages,
        "summed over the sending things, each judged by the sequence numbers of its stamps; "
        "`unstamped` messages are not judged",
    ]
    rate: Annotated[SubscribeRate, "received per second of listening"]
    things: Annotated[list[SubscribeThing], "per sending thing"]
    subscribers: Annotated[list[Subscriber], "per subscribing connection"]
    shared_group: NotRequired[
        Annotated[
            str,
            "`subscribe --shared GROUP`: a member of this shared subscription group, which saw "
            "a share of each thing's messages, so `lost` is 0 here: `report merge` of the "
            "members' reports counts the group's loss",
        ]
    ]
    histograms: NotRequired[
        Annotated[
            SubscribeHistograms,
            f"v2: the latencies as {HDR}, for the whole run and per `series` row",
        ]
    ]


# `run`: the send phase's report, and how the run went.


class ThresholdResult(TypedDict):
    expr: Annotated[str, "the --threshold as given"]
    metric: Annotated[str, "the report path it reads (or error_rate, achieved_rate)"]
    value: Annotated[float | None, "the value found (null: no data, which fails)"]
    limit: Annotated[float, "the limit in the metric's unit (ms, a fraction, a count)"]
    ok: Annotated[bool, "whether it held"]


class RunSummary(TypedDict):
    exit_code: Annotated[int, "the exit code (see Exit codes)"]
    failure: Annotated[str | None, "why the run failed, e.g. `send failed: …` (null: it did not)"]
    elapsed_s: Annotated[float, "seconds from create to the end of clean"]
    fleet_id: Annotated[str | None, "the fleet created"]
    created: Annotated[int, "things created"]
    cleaned: Annotated[bool, "whether nothing is left of the fleet"]


class RunParts(TypedDict):
    thresholds: Annotated[
        list[ThresholdResult], "each `--threshold`: its metric, value (null: no data), verdict"
    ]
    run: Annotated[
        RunSummary,
        "`exit_code`, `failure` (e.g. `send failed: …`), the fleet created and whether it is gone",
    ]


class RunReport(SendReport, RunParts):
    """`run`'s report: its send phase's, with the thresholds and the run."""


class UnsentRunReport(ReportHead, RunParts):
    """`run`'s report when it stopped before its send phase (a signal, or create failed):
    there is no send to count, so only the head, the thresholds (no data) and the run."""


# Reading the model.


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a TypedDict: its type without the description, and whether it is always
    present."""

    name: str
    type: Any
    description: str
    required: bool


def fields_of(part: Any) -> list[Field]:
    """A TypedDict's fields in order (a base's first); a field without a description is a
    TypeError, so every field of the model has one."""
    result = []
    for name, hint in get_type_hints(part, include_extras=True).items():
        required = name in part.__required_keys__
        if get_origin(hint) in (NotRequired, Required):
            (hint,) = get_args(hint)
        if get_origin(hint) is not Annotated or not isinstance(hint.__metadata__[0], str):
            raise TypeError(f"{part.__name__}.{name} has no description")
        result.append(Field(name, hint.__origin__, hint.__metadata__[0], required))
    return result


def non_null(hint: Any) -> Any:
    """`T` for ``T | None``; any other type as it is."""
    if get_origin(hint) in (Union, types.UnionType):
        rest = [arg for arg in get_args(hint) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def shape(hint: Any) -> str:
    """What a value looks like, by field names: ``{a, b}``, ``[{a, b}]``, or ``{a, b} each
    {c, d}`` for fields of one shape; nothing for a plain value."""
    hint = non_null(hint)
    if get_origin(hint) is list:
        inner = shape(get_args(hint)[0])
        return f"[{inner}]" if inner else ""
    if not is_typeddict(hint):
        return ""
    fields = fields_of(hint)
    kinds = {non_null(f.type) for f in fields}
    names = ", ".join(f.name for f in fields)
    if len(kinds) == 1 and is_typeddict(only := kinds.pop()):
        return f"{{{names}}} each {shape(only)}"
    return "{" + ", ".join(f"{f.name} {shape(f.type)}".rstrip() for f in fields) + "}"


# The README's rows: (label, report, the report whose fields it adds to), in order.
PARTS: Final[tuple[tuple[str, type, type | None], ...]] = (
    ("all", CommonReport, None),
    ("send", SendReport, CommonReport),
    ("subscribe", SubscribeReport, CommonReport),
    ("run", RunReport, SendReport),
)


def readme_table() -> str:
    """The README's report table (markdown): one row per field of a report."""
    lines = ["| field | in | meaning |", "|---|---|---|"]
    for label, part, base in PARTS:
        inherited = {f.name for f in fields_of(base)} if base else set()
        for f in fields_of(part):
            if f.name not in inherited:
                cell = f"{f.name} {shape(f.type)}".rstrip()
                lines.append(f"| `{cell}` | {label} | {f.description} |")
    return "\n".join(lines) + "\n"
