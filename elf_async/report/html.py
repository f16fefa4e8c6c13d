"""The report as one self-contained HTML page: the verdict, charts and tables. Pure logic.

`render_html` turns a report (schema 1 or 2, as read back from JSON) into one page that works
offline: uPlot's script and style (vendored in ``vendor/uplot/``, see its README) are inlined,
and nothing is fetched. What is drawn is decided here, in Python: each chart is a small spec
(title, series, data) that the page's script hands to uPlot, sized to its container and resized
with the window. Every string of the report is HTML-escaped; the report itself is embedded as
JSON (``<`` escaped, so no string can close the script element).

- Per second (`series`): target against achieved messages, connections, acknowledged, failed
  and reconnects, and (schema 2) the ack and lag percentiles; for `subscribe`, received, lost
  and duplicates and (schema 2) the end-to-end percentiles.
- Distributions: latency by percentile, from the HDR histogram when the report has it (schema
  2's `histograms`), else from the report's percentiles.
- Per thing: a strip of each thing's counts, so one bad thing shows at a glance; above
  `MAX_COLUMNS` things, each column sums a run of neighbours (the page says how many).

The verdict line is elf_async.report.verdict's, as the command printed it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypedDict, cast

from elf_async.errors import UsageError
from elf_async.files import write_public
from elf_async.metrics import Histogram
from elf_async.report.model import SendReport, SubscribeReport
from elf_async.report.thresholds import Verdict, format_value, parse
from elf_async.report.verdict import Judgement, judge_run, judge_send, judge_subscribe

# Above this many things, the per-thing strip sums runs of neighbouring things into one column:
# more columns than a screen has pixels show nothing more, and the page stays light.
MAX_COLUMNS: Final = 1000
# Things listed by name in "Things that did not do all they should" (the strip shows them all).
MAX_LISTED: Final = 50
# The distribution curve: percentiles at 0, 0.05, ... nines (90% is 1 nine, 99% 2, ...).
NINES_STEP: Final = 0.05
MAX_NINES: Final = 5.0
# A row of the series closer than this to the one before joins it (see `_rates`).
MIN_INTERVAL_S: Final = 0.5

BLUE, GREEN, RED, ORANGE, GREY, PURPLE, TEAL = (
    "#2563eb",
    "#16a34a",
    "#dc2626",
    "#ea580c",
    "#6b7280",
    "#7c3aed",
    "#0d9488",
)


class SeriesSpec(TypedDict):
    label: str
    color: str
    scale: str  # "y" (left axis) or "y2" (right axis)
    style: str  # "line", "dash", "bars" or "points" (a line with its points)


class ChartSpec(TypedDict):
    id: str
    title: str
    note: str
    x: str  # "seconds", "things" or "nines": how the page labels the x axis
    y: str  # the left axis' unit
    y2: str  # the right axis' unit ("" without one)
    series: list[SeriesSpec]
    data: list[list[float | None]]
    names: list[str]  # per x value, what the legend shows (the things' names); may be empty


def _series(label: str, color: str, *, scale: str = "y", style: str = "line") -> SeriesSpec:
    return {"label": label, "color": color, "scale": scale, "style": style}


def _chart(
    title: str,
    *,
    x: str,
    y: str,
    series: Sequence[SeriesSpec],
    data: Sequence[Sequence[float | None]],
    note: str = "",
    y2: str = "",
    names: Sequence[str] = (),
) -> ChartSpec:
    return {
        "id": "",  # numbered when the page is put together
        "title": title,
        "note": note,
        "x": x,
        "y": y,
        "y2": y2,
        "series": list(series),
        "data": [list(column) for column in data],
        "names": list(names),
    }


# --- What is drawn -----------------------------------------------------------------------------


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> list[float | None]:
    return [row.get(name) for row in rows]


def _per_second(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    columns: Sequence[tuple[str, SeriesSpec]],
    *,
    y: str,
    y2: str = "",
    note: str = "",
) -> ChartSpec:
    """The columns as they are in each row (gauges, percentiles)."""
    return _chart(
        title,
        x="seconds",
        y=y,
        y2=y2,
        note=note,
        series=[spec for _, spec in columns],
        data=[_column(rows, "t"), *(_column(rows, name) for name, _ in columns)],
    )


def _rates(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    columns: Sequence[tuple[str, SeriesSpec]],
    *,
    y2: str = "",
    note: str = "",
    target: SeriesSpec | None = None,
    target_per_s: float = 0.0,
) -> ChartSpec:
    """Counts per second: each row's counts over its interval. A row closer than
    `MIN_INTERVAL_S` to the one before (the last, cut short by the end) joins that one, so a
    few messages in a sliver of a second neither read as a rate of thousands nor as a fall."""
    names = [name for name, _ in columns]
    intervals: list[tuple[float, float, list[float]]] = []  # (t, seconds, counts)
    previous = 0.0
    for row in rows:
        counts = [float(row.get(name) or 0) for name in names]
        seconds, previous = row["t"] - previous, row["t"]
        if intervals and seconds < MIN_INTERVAL_S:
            _, before, summed = intervals[-1]
            counts = [a + b for a, b in zip(summed, counts, strict=True)]
            intervals[-1] = (row["t"], before + seconds, counts)
        else:
            intervals.append((row["t"], seconds, counts))
    data: list[list[float | None]] = [[t for t, _, _ in intervals]]
    if target is not None:
        data.append([target_per_s] * len(intervals))
    for n in range(len(names)):
        data.append([round(c[n] / s, 3) if s > 0 else None for _, s, c in intervals])
    return _chart(
        title,
        x="seconds",
        y="msg/s",
        y2=y2,
        note=note,
        series=([target] if target else []) + [spec for _, spec in columns],
        data=data,
    )


def _has_columns(rows: Sequence[Mapping[str, Any]], names: Iterable[str]) -> bool:
    return bool(rows) and all(name in rows[0] for name in names)


def _missing(report: Mapping[str, Any], title: str) -> ChartSpec:
    """In place of a chart of schema 2's columns: why it is not drawn."""
    old = report["schema"].endswith("/1")
    note = "not in this report" + (" (schema v1)" if old else "")
    return _chart(title, x="seconds", y="", series=[], data=[], note=note)


def _percentiles(
    report: Mapping[str, Any],
    title: str,
    columns: Sequence[tuple[str, SeriesSpec]],
    *,
    note: str,
) -> ChartSpec:
    """Schema 2's per-second percentile columns, in ms; in place of them, why they are not."""
    rows: list[Mapping[str, Any]] = report["series"]
    if not _has_columns(rows, [name for name, _ in columns]):
        return _missing(report, title)
    return _per_second(rows, title, columns, y="ms", note=note)


def send_charts(report: Mapping[str, Any]) -> list[ChartSpec]:
    """`send`'s (and `run`'s) charts; in place of one the report has no data for, why."""
    rows: list[Mapping[str, Any]] = report["series"]
    target = report["rate"]["target_per_s"]
    qos0 = report["messages"]["acked"] is None
    charts = [
        _rates(
            rows,
            "Messages per second: target and achieved",
            [("scheduled", _series("due", ORANGE)), ("published", _series("published", BLUE))],
            # A shaped send's target changes by stage: its due line is the plan, not a mean.
            target=None if "stages" in report else _series("target", GREY, style="dash"),
            target_per_s=target,
            note="due: what the schedule asked for; published: what was written",
        ),
        _connected(report, rows),
        _rates(
            rows,
            "Acknowledged, failed and reconnects per second",
            [
                ("acked", _series("acknowledged", GREEN)),
                ("failed", _series("failed", RED, scale="y2")),
                ("reconnects", _series("reconnects", ORANGE, scale="y2")),
            ],
            y2="per s",
            note="QoS 0: nothing is acknowledged" if qos0 else "failed and reconnects: right axis",
        ),
    ]
    charts.append(
        _percentiles(
            report,
            "Ack and lag latency per second",
            [
                ("ack_p50_ms", _series("ack p50", GREEN)),
                ("ack_p99_ms", _series("ack p99", GREEN, style="dash")),
                ("lag_p50_ms", _series("lag p50", PURPLE)),
                ("lag_p99_ms", _series("lag p99", PURPLE, style="dash")),
            ],
            note="ack: PUBACK - due time; lag: send - due time",
        )
    )
    charts.append(distribution(report, "connect", "Connect latency distribution"))
    charts.append(
        thing_strip(
            report["things"],
            [
                ("published", _series("published", BLUE, style="bars")),
                ("unsent", _series("unsent", ORANGE, scale="y2", style="bars")),
                ("failed", _series("failed", RED, scale="y2", style="bars")),
            ],
            bad="unsent and failed (right axis)",
        )
    )
    return charts


def _connected(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> ChartSpec:
    """Connections; a shaped send's (--stages, --churn, --storm) beside the plan, with its
    stage boundaries as the stage's index on the right axis."""
    columns = [("connected", _series("connected", TEAL))]
    if not _has_columns(rows, ["target_connected"]):
        return _per_second(rows, "Connected clients", columns, y="clients")
    columns.append(("target_connected", _series("planned", GREY, style="dash")))
    stages = report.get("stages", [])
    if any("group" in stage for stage in stages):  # a scenario's groups: their stages overlap
        by_group: dict[str, list[str]] = {}
        for stage in stages:
            by_group.setdefault(stage["group"], []).append(f"{stage['start_s']:g}")
        starts = "; ".join(f"{group} {', '.join(at)}" for group, at in by_group.items())
        return _per_second(
            rows,
            "Connected clients: planned by the groups' stages and connected",
            columns,
            y="clients",
            note=f"each group's stages start at t = {starts} s",
        )
    columns.append(("stage", _series("stage", ORANGE, scale="y2", style="dash")))
    starts = ", ".join(f"{stage['start_s']:g}" for stage in stages)
    return _per_second(
        rows,
        "Connected clients: planned by the stages and connected",
        columns,
        y="clients",
        y2="stage",
        note=f"stages start at t = {starts} s (right axis: the stage running)",
    )


def subscribe_charts(report: Mapping[str, Any]) -> list[ChartSpec]:
    """`subscribe`'s charts; in place of one the report has no data for, why."""
    rows: list[Mapping[str, Any]] = report["series"]
    charts = [
        _rates(rows, "Messages received per second", [("received", _series("received", BLUE))]),
        _per_second(
            rows,
            "Connected subscribers",
            [("connected", _series("connected", TEAL))],
            y="subscribers",
            note="the last row has no count: the subscribers were closing",
        ),
        _rates(
            rows,
            "Lost and duplicates per second",
            [("lost", _series("lost", RED)), ("duplicates", _series("duplicates", ORANGE))],
        ),
    ]
    charts.append(
        _percentiles(
            report,
            "End-to-end latency per second",
            [
                ("e2e_p50_ms", _series("p50", GREEN)),
                ("e2e_p99_ms", _series("p99", GREEN, style="dash")),
            ],
            note="receive time - the message's ts",
        )
    )
    charts.append(distribution(report, "end_to_end", "End-to-end latency distribution"))
    charts.append(distribution(report, "connect", "Connect latency distribution"))
    charts.append(
        thing_strip(
            report["things"],
            [
                ("received", _series("received", BLUE, style="bars")),
                ("lost", _series("lost", RED, scale="y2", style="bars")),
                ("duplicates", _series("duplicates", ORANGE, scale="y2", style="bars")),
                ("out_of_order", _series("out of order", PURPLE, scale="y2", style="bars")),
            ],
            bad="lost, duplicates and out of order (right axis)",
            what="sending thing",
        )
    )
    return charts


def nines(percentile: float) -> float:
    """90% is 1 nine, 99% 2, 99.9% 3: the x of a latency-by-percentile curve."""
    return -math.log10(1.0 - percentile / 100.0)


def distribution(report: Mapping[str, Any], name: str, title: str) -> ChartSpec:
    """Latency by percentile: from the HDR histogram (schema 2) when the report has one, else
    from the report's percentiles (p50, p90, p99, p99.9)."""
    encoded = report.get("histograms", {}).get(name)
    if isinstance(encoded, str):
        histogram = _decoded(encoded)
        if histogram is not None and histogram.count:
            top = min(MAX_NINES, math.log10(histogram.count) + 1.0)
            steps = [i * NINES_STEP for i in range(int(top / NINES_STEP) + 1)]
            values = [histogram.percentile_ms(100.0 * (1.0 - 10.0**-x)) for x in steps]
            return _chart(
                title,
                x="nines",
                y="ms",
                note=f"{histogram.count:,} recorded, from the HDR histogram",
                series=[_series(name.replace("_", "-"), BLUE)],
                data=[[round(x, 3) for x in steps], values],
            )
    summary = report["latency_ms"][name]
    points = [(nines(p), summary[key]) for key, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))]
    points.append((nines(99.9), summary["p999"]))
    kept = [(x, value) for x, value in points if value is not None]
    return _chart(
        title,
        x="nines",
        y="ms",
        note=f"{summary['count']:,} recorded; from the report's p50, p90, p99 and p99.9"
        + ("" if kept else ": none"),
        series=[_series(name.replace("_", "-"), BLUE, style="points")],
        data=[[round(x, 3) for x, _ in kept], [value for _, value in kept]],
    )


def _decoded(encoded: str) -> Histogram | None:
    """The histogram, or None if it does not decode (the percentiles are drawn instead)."""
    try:
        return Histogram.decode(encoded.encode("ascii"))
    except Exception:  # hdrh raises its own kinds on bad input: any of them means unreadable
        return None


def thing_strip(
    things: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, SeriesSpec]],
    *,
    bad: str,
    what: str = "thing",
) -> ChartSpec:
    """One column per thing, in fleet order (above `MAX_COLUMNS`, one per run of neighbours,
    summed): the good count on the left axis, the bad ones on the right with a scale of their
    own, so a single bad thing among many still reaches the top."""
    size = max(1, math.ceil(len(things) / MAX_COLUMNS))
    starts = range(0, len(things), size)
    data: list[list[float | None]] = [[float(start) for start in starts]]
    for name, _ in columns:
        values = [thing[name] or 0 for thing in things]
        data.append([float(sum(values[start : start + size])) for start in starts])
    if size == 1:
        names = [str(thing["name"]) for thing in things]
        note = f"one column per {what}; {bad}"
    else:
        names = [_run_name(things, start, size) for start in starts]
        note = (
            f"{len(things):,} {what}s: each column sums {size:,} neighbours "
            f"({len(starts):,} columns); {bad}"
        )
    return _chart(
        f"Per {what}",
        x="things",
        y="msg",
        y2="msg",
        note=note,
        series=[spec for _, spec in columns],
        data=data,
        names=names,
    )


def _run_name(things: Sequence[Mapping[str, Any]], start: int, size: int) -> str:
    last = min(start + size, len(things)) - 1
    return f"#{start}-{last}: {things[start]['name']} … {things[last]['name']}"


# --- The verdict and the tables ----------------------------------------------------------------


def judgement(report: Mapping[str, Any]) -> Judgement:
    """The verdict the command printed, from its report."""
    if "run" in report:
        verdicts = [Verdict(parse(t["expr"]), t["value"], t["ok"]) for t in report["thresholds"]]
        outcome = report["outcome"]
        return judge_run(
            cast(SendReport, report) if "messages" in report else None,
            failure=report["run"]["failure"],
            thresholds=verdicts,
            interrupted=None if outcome == "completed" else outcome,
        )
    if report["command"] == "subscribe":
        return judge_subscribe(cast(SubscribeReport, report))
    return judge_send(cast(SendReport, report))


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    """A value for a table: numbers grouped, null as a dash, lists and objects as JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _table(
    caption: str,
    head: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    note: str = "",
    wide: bool = False,
) -> str:
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row) + "</tr>\n" for row in rows
    )
    heads = "".join(f"<th>{_e(h)}</th>" for h in head) if any(head) else ""
    tail = f'<p class="note">{_e(note)}</p>' if note else ""
    return (
        f"<section{' class=wide' if wide else ''}><h2>{_e(caption)}</h2>{tail}"
        "<div class=scroll><table>"
        + (f"<thead><tr>{heads}</tr></thead>" if heads else "")
        + f"<tbody>\n{body}</tbody></table></div></section>\n"
    )


def _pairs(caption: str, rows: Iterable[tuple[str, object]]) -> str:
    return _table(caption, ("", ""), rows)


def _flat(value: Mapping[str, Any], prefix: str = "") -> list[tuple[str, object]]:
    """Nested objects as dotted names: ``connect.keepalive``."""
    rows: list[tuple[str, object]] = []
    for key, item in value.items():
        if isinstance(item, Mapping):
            rows += _flat(item, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", item))
    return rows


def _command(report: Mapping[str, Any]) -> str:
    """`run` for a run's report (whose send phase says `send`)."""
    return "run" if "run" in report else str(report["command"])


def _overview(report: Mapping[str, Any]) -> str:
    rows: list[tuple[str, object]] = [
        ("command", _command(report)),
        ("outcome", report["outcome"]),
        ("started", report["started_at"]),
        ("ended", report["ended_at"]),
        ("duration", f"{report['duration_s']:,.1f} s"),
    ]
    if "fleet" in report:
        rows += [("fleet", report["fleet"]["fleet_id"]), ("things", report["fleet"]["things"])]
    if "endpoint" in report:
        e = report["endpoint"]
        alpn = ", ALPN x-amzn-mqtt-ca" if e["alpn"] else ""
        rows.append(("endpoint", f"{e['host']}:{e['port']}{alpn}"))
    if "transport" in report:
        rows.append(("transport", report["transport"]))
    if "workers" in report:
        rows.append(("workers", report["workers"]["count"]))
        rows += [("worker lost", line) for line in report["workers"]["lost"]]
    if "shard" in report:
        rows.append(("shard", f"{report['shard']['index']} of {report['shard']['count']}"))
    if "shards" in report:
        s = report["shards"]
        rows.append(("shards", f"{s['merged']} of {s['count']} merged, {s['missing']} missing"))
    if "start" in report:
        rows.append(("start at", report["start"]["at"]))
        rows.append(("late start", f"{report['start']['late_start_s']:.3f} s"))
    rows.append(("elf-async", report["version"]))
    if isinstance(report.get("python"), str):
        rows.append(("Python", report["python"]))
    return _pairs("Run", rows)


def _latency_table(report: Mapping[str, Any]) -> str:
    stats = ("count", "p50", "p90", "p99", "p999", "max", "mean")
    rows = [[name, *(s[k] for k in stats)] for name, s in report["latency_ms"].items()]
    return _table("Latency (ms)", ("", *stats), rows, wide=True)


def _thresholds_table(report: Mapping[str, Any]) -> str:
    rows = []
    for t in report["thresholds"]:
        shown = "no data" if t["value"] is None else format_value(t["metric"], t["value"])
        limit = format_value(t["metric"], t["limit"])
        rows.append((t["expr"], t["metric"], shown, limit, "ok" if t["ok"] else "FAILED"))
    return _table(
        "Thresholds", ("threshold", "metric", "value", "limit", "verdict"), rows, wide=True
    )


def _bad_things(
    things: Sequence[Mapping[str, Any]], fields: Sequence[str], *, what: str = "things"
) -> str:
    """The things (or subscribers) that did not do all they should, by name (the first
    `MAX_LISTED`)."""
    bad = [t for t in things if t.get("error") or any(t.get(f) for f in fields)]
    if not bad:
        return ""
    shown = bad[:MAX_LISTED]
    more = f"; the first {len(shown)} of {len(bad):,}" if len(bad) > len(shown) else ""
    head = ["name", *fields, *(["error"] if "error" in things[0] else [])]
    rows = [[t.get(name) for name in head] for t in shown]
    caption = f"{what.capitalize()} with problems"
    return _table(caption, head, rows, note=f"{len(bad):,} {what}{more}", wide=True)


def tables(report: Mapping[str, Any]) -> str:
    """Every table of the page, in order."""
    parts = [_thresholds_table(report)] if "thresholds" in report else []
    parts.append(_overview(report))
    if "run" in report:
        run = report["run"]
        parts.append(_pairs("Create, send, clean", list(run.items())))
    if "messages" in report:
        parts.append(_pairs("Messages", list(report["messages"].items())))
        parts.append(_pairs("Rate (msg/s)", list(report["rate"].items())))
        parts.append(_latency_table(report))
    if "connections" in report:
        c = report["connections"]
        rows = [(k, v) for k, v in c.items() if k != "errors"]
        rows += [(f"error: {reason}", n) for reason, n in c["errors"].items()]
        parts.append(_pairs("Connections", rows))
    if report["command"] == "subscribe":
        parts.append(_bad_things(report["things"], ("lost", "duplicates", "out_of_order")))
        parts.append(_bad_things(report["subscribers"], (), what="subscribers"))
    elif "things" in report:
        parts.append(_bad_things(report["things"], ("failed", "unsent")))
    if isinstance(report.get("aws_metrics"), Mapping):
        parts.append(_pairs("AWS IoT's own counts (CloudWatch)", _flat(report["aws_metrics"])))
    parts.append(_pairs("Options", _flat(report["options"])))
    return "".join(parts)


# --- The page ----------------------------------------------------------------------------------


def _vendored(name: str) -> str:
    return (resources.files("elf_async.report") / "vendor" / "uplot" / name).read_text("utf-8")


def script_json(value: object) -> str:
    """JSON safe inside a <script> element: no ``<``, ``>`` or ``&`` at all (escaped as
    ``\\u003c`` and so on, which JSON reads back the same), so nothing can close it."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(report: Mapping[str, Any]) -> str:
    """The page for `report` (as read back from JSON, schema 1 or 2)."""
    verdict = judgement(report)
    if "series" not in report:  # a run that stopped before sending: nothing to draw
        charts = [
            _chart(
                "Charts",
                x="seconds",
                y="",
                series=[],
                data=[],
                note="the run stopped before its send phase: there is nothing to draw",
            )
        ]
    elif report["command"] == "subscribe":
        charts = subscribe_charts(report)
    else:
        charts = send_charts(report)
    title = f"elf-async {_command(report)} {report['started_at']}"
    return _page(
        title, verdict.line(), passed=verdict.passed, charts=charts, tables=tables(report),
        embedded=report,
    )  # fmt: skip


def render_compare_html(
    base: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    rows: Sequence[Sequence[str]],
    verdict: str,
    passed: bool,
) -> str:
    """`report compare`'s page: its table (`rows`: metric, base, new, change, verdict) and the
    two runs' per-second figures drawn over each other, second by second from each start."""
    counted = "received" if base["command"] == "subscribe" else "published"
    charts = [
        _overlay(
            f"{counted.capitalize()} messages per second",
            [_second_rates(r, counted) for r in (base, new)],
            y="msg/s",
        )
    ]
    p99 = "e2e_p99_ms" if base["command"] == "subscribe" else "ack_p99_ms"
    if all(_has_columns(r.get("series", []), [p99]) for r in (base, new)):
        columns = [{_second(row["t"]): row[p99] for row in r["series"]} for r in (base, new)]
        charts.append(_overlay(f"{p99.removesuffix('_ms').replace('_', ' ')} per second",
                               columns, y="ms"))  # fmt: skip
    else:
        charts.append(_missing(base if base["schema"].endswith("/1") else new, "p99 per second"))
    runs = [
        (name, r["started_at"], r["outcome"], r.get("fleet", {}).get("things"), r["version"])
        for name, r in (("base", base), ("new", new))
    ]
    page_tables = _table(
        "Comparison", ("metric", "base", "new", "change", "verdict"), rows, wide=True
    ) + _table("Runs", ("", "started", "outcome", "things", "elf-async"), runs, wide=True)
    title = f"elf-async compare {base['started_at']} / {new['started_at']}"
    return _page(
        title, verdict, passed=passed, charts=charts, tables=page_tables,
        embedded={"base": base, "new": new},
    )  # fmt: skip


def _second(t: float) -> int:
    """The whole second since its run's start that a series row at `t` closes."""
    return max(1, math.ceil(t - 1e-9))


def _second_rates(report: Mapping[str, Any], column: str) -> dict[int, float | None]:
    rows: list[Mapping[str, Any]] = report.get("series", [])
    rated = _rates(rows, "", [(column, _series(column, BLUE))])
    times, rates = rated["data"][0], rated["data"][1]
    return {_second(t): rate for t, rate in zip(times, rates, strict=True) if t is not None}


def _overlay(title: str, runs: Sequence[Mapping[int, float | None]], *, y: str) -> ChartSpec:
    """Base's and new's per-second values on one axis of seconds since each one's start."""
    seconds = sorted(set().union(*runs))
    return _chart(
        title,
        x="seconds",
        y=y,
        series=[_series("base", GREY, style="dash"), _series("new", BLUE)],
        data=[[float(t) for t in seconds], *([run.get(t) for t in seconds] for run in runs)],
    )


def _page(
    title: str,
    verdict: str,
    *,
    passed: bool,
    charts: Sequence[ChartSpec],
    tables: str,
    embedded: object,
) -> str:
    """One self-contained page: the verdict, the charts (uPlot, inlined), the tables, and
    the reports it was made from as JSON."""
    figures = []
    for n, chart in enumerate(charts):
        chart["id"] = f"chart-{n}"
        note = f'<p class="note">{_e(chart["note"])}</p>' if chart["note"] else ""
        plot = f'<div class="plot" id="{chart["id"]}"></div>' if chart["series"] else ""
        empty = "" if chart["series"] else ' class="empty"'
        figures.append(
            f"<figure{empty}><figcaption>{_e(chart['title'])}</figcaption>{note}{plot}</figure>\n"
        )
    return _PAGE.format(
        title=_e(title),
        uplot_css=_vendored("uPlot.min.css"),
        css=_CSS,
        heading=_e(title),
        state="pass" if passed else "fail",
        verdict=_e(verdict),
        figures="".join(figures),
        tables=tables,
        report_json=script_json(embedded),
        charts_json=script_json([chart for chart in charts if chart["series"]]),
        uplot_js=_vendored("uPlot.iife.min.js"),
        js=_JS,
    )


def write_html(path: Path, page: str, *, option: str = "--html") -> None:
    """Write the page atomically; an unwritable path is a UsageError naming `option`."""
    try:
        write_public(path, page)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from exc


_CSS = """
:root { --fg: #111827; --muted: #6b7280; --line: #e5e7eb; --pass: #15803d; --fail: #b91c1c; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #f9fafb; }
main { max-width: 1280px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.25rem; margin: 0 0 8px; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 0 0 6px; }
.verdict { padding: 10px 14px; border-radius: 6px; color: #fff; font-weight: 600;
  overflow-wrap: anywhere; }
.verdict.pass { background: var(--pass); } .verdict.fail { background: var(--fail); }
.charts { display: grid; gap: 16px; margin: 16px 0;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 560px), 1fr)); }
figure { margin: 0; padding: 10px; background: #fff; border: 1px solid var(--line);
  border-radius: 6px; min-width: 0; }
figcaption { font-weight: 600; }
figure.empty { align-self: start; }
.plot { width: 100%; min-height: 120px; }
.note { color: var(--muted); font-size: 0.85rem; margin: 2px 0 6px; overflow-wrap: anywhere; }
.tables { display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 400px), 1fr)); align-items: start; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 10px;
  min-width: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 3px 8px 3px 0; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: break-word; }
section.wide { grid-column: 1 / -1; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
.uplot { font-family: inherit; }
.u-legend { font-size: 0.8rem; }
.u-legend.u-inline .u-series { padding: 0 6px; }
@media (max-width: 600px) { main { padding: 8px; } body { font-size: 14px; } }
"""

_JS = r"""
(function () {
  "use strict";
  var specs = JSON.parse(document.getElementById("elf-charts").textContent);
  var PCT = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
  function nines(x) {
    var p = 100 * (1 - Math.pow(10, -x));
    if (Number.isInteger(x) && x < PCT.length) return PCT[x];
    return p.toPrecision(6).replace(/0+$/, "") + "%";
  }
  function num(v) {
    if (v == null) return "-";
    return Math.abs(v) >= 100 ? Math.round(v).toLocaleString("en") : +v.toPrecision(3) + "";
  }
  // Ticks on whole seconds (minutes, hours) and whole things.
  var SECONDS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 86400];
  var COUNTS = [];
  for (var step = 1; step <= 1e7; step *= 10) COUNTS.push(step, 2 * step, 5 * step);
  function height(width) { return width < 500 ? 180 : 240; }
  function zeroBased(u, min, max) {
    if (min == null || max == null) return [0, 1];
    return [Math.min(0, min), max > 0 ? max * 1.08 : 1];
  }
  function build(spec) {
    var el = document.getElementById(spec.id);
    var things = spec.x === "things";
    // The bad counts (right axis) at least 3 px wide and opaque: one bad column shows.
    var bars = uPlot.paths.bars({size: [things ? 1 : 0.8, Infinity, 1], gap: 0});
    var badBars = uPlot.paths.bars({size: [things ? 1 : 0.8, Infinity, 3], gap: 0});
    var xs = spec.data[0];
    var series = [{
      label: {seconds: "time", things: "thing", nines: "percentile"}[spec.x],
      value: function (u, v, s, i) {
        if (v == null) return "-";
        if (spec.names.length && i != null) return spec.names[i];
        return spec.x === "nines" ? nines(v) : v + " s";
      }
    }];
    var right = false;
    spec.series.forEach(function (s) {
      right = right || s.scale === "y2";
      var unit = (s.scale === "y2" ? spec.y2 : spec.y);
      var one = {
        label: s.label, stroke: s.color, scale: s.scale, width: 1.5, spanGaps: false,
        fill: s.style === "bars" ? s.color + (s.scale === "y2" ? "" : "cc") : undefined,
        dash: s.style === "dash" ? [6, 4] : undefined,
        paths: s.style === "bars" ? (s.scale === "y2" ? badBars : bars) : undefined,
        value: function (u, v) { return v == null ? "-" : num(v) + (unit ? " " + unit : ""); }
      };
      // Points where a line alone would hide a value: next to a gap, or among few samples.
      var few = spec.data[0].length <= 60;
      if (s.style === "bars") one.points = {show: false};
      else if (s.style === "points" || few) one.points = {show: true, size: 5};
      series.push(one);
    });
    var axes = [
      {label: {seconds: "seconds since start", things: "thing (fleet order)",
               nines: "percentile"}[spec.x],
       values: spec.x === "nines" ? function (u, vals) { return vals.map(nines); } : undefined,
       incrs: {nines: [1], seconds: SECONDS, things: COUNTS}[spec.x]},
      {scale: "y", label: spec.y, size: 56, values: function (u, vals) { return vals.map(num); }}
    ];
    if (right) {
      axes.push({scale: "y2", side: 1, label: spec.y2, size: 56, grid: {show: false},
                 values: function (u, vals) { return vals.map(num); }});
    }
    var xrange;
    if (things) xrange = function (u, min, max) { return [min - 0.5, max + 0.5]; };
    var top = Math.max(3, xs.length ? xs[xs.length - 1] : 0);
    if (spec.x === "nines") xrange = function () { return [0, top]; };
    var width = el.clientWidth;
    var opts = {
      width: width, height: height(width), series: series, axes: axes,
      scales: {x: {time: false, range: xrange}, y: {range: zeroBased}, y2: {range: zeroBased}},
      legend: {live: true},
      cursor: {drag: {x: true, y: false}}
    };
    return {el: el, plot: new uPlot(opts, spec.data, el)};
  }
  var plots = specs.map(build);
  var pending = false;
  window.addEventListener("resize", function () {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () {
      pending = false;
      plots.forEach(function (p) {
        var width = p.el.clientWidth;
        if (width !== p.plot.width) p.plot.setSize({width: width, height: height(width)});
      });
    });
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="elf-async">
<title>{title}</title>
<style>{uplot_css}</style>
<style>{css}</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<p class="verdict {state}">{verdict}</p>
<div class="charts">
{figures}</div>
<div class="tables">
{tables}</div>
</main>
<script type="application/json" id="elf-report">{report_json}</script>
<script type="application/json" id="elf-charts">{charts_json}</script>
<script>{uplot_js}</script>
<script>{js}</script>
</body>
</html>
"""
