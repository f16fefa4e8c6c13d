"""Complete reports made up for tests of what reads them (the HTML page): schema 1 as the
model describes it (tests check them with `support.report.assert_conforms`), and schema 2's
additions of the shared contract (per-second percentiles, encoded HDR histograms)."""

from __future__ import annotations

import copy
from typing import Any

from elf_async.metrics import Histogram


def _latency(*values_ms: float) -> dict[str, Any]:
    return histogram(*values_ms).summary_ms()


def histogram(*values_ms: float) -> Histogram:
    h = Histogram()
    for value in values_ms:
        h.record(value / 1000.0)
    return h


def _head(command: str) -> dict[str, Any]:
    return {
        "schema": "elf-async/report/1",
        "command": command,
        "version": "0.1.0",
        "outcome": "completed",
        "started_at": "2026-01-02T03:04:05.000+00:00",
        "ended_at": "2026-01-02T03:04:15.000+00:00",
        "duration_s": 10.0,
        "options": {"rate": "1/s", "report": "r.json", "connect": {"keepalive": 60}},
    }


def _common(command: str, things: int) -> dict[str, Any]:
    return {
        **_head(command),
        "fleet": {"fleet_id": "abcd1234", "things": things},
        "endpoint": {"host": "127.0.0.1", "port": 8883, "alpn": False},
        "connections": {
            "attempted": things,
            "succeeded": things,
            "failed": 0,
            "reconnects": 0,
            "reconnect_attempts": 0,
            "takeovers": 0,
            "things_failed": 0,
            "errors": {},
        },
    }


def send_report(*, things: int = 3, seconds: int = 5, per_thing: int = 1) -> dict[str, Any]:
    """A clean send: every thing published `per_thing` messages a second, all acknowledged."""
    each = per_thing * seconds
    total = things * each
    latency = _latency(1.0, 2.0, 3.0)
    report = _common("send", things)
    report |= {
        "latency_ms": {
            "connect": _latency(8.0, 9.0, 12.0),
            "ack": latency,
            "ack_from_send": latency,
            "lag": latency,
        },
        "series": [
            {
                "t": float(t),
                "scheduled": things * per_thing,
                "published": things * per_thing,
                "acked": things * per_thing,
                "failed": 0,
                "reconnects": 0,
                "connected": things,
            }
            for t in range(1, seconds + 1)
        ],
        "messages": {
            "qos": 1,
            "scheduled": total,
            "published": total,
            "acked": total,
            "failed": 0,
            "unsent": 0,
            "retransmitted": 0,
        },
        "rate": {
            "target_per_s": float(things * per_thing),
            "per_thing_per_s": float(per_thing),
            "achieved_per_s": float(things * per_thing),
            "publish_window_s": float(seconds),
        },
        "things": [
            {
                "name": f"elf-abcd1234-{i:05d}",
                "topic": f"elf/elf-abcd1234-{i:05d}",
                "scheduled": each,
                "published": each,
                "acked": each,
                "failed": 0,
                "unsent": 0,
                "reconnects": 0,
                "error": None,
            }
            for i in range(things)
        ],
    }
    return report


def run_report(**thresholds_ok: bool) -> dict[str, Any]:
    """`run`'s report of a clean send, with the thresholds named (an expression each)."""
    report = send_report()
    report["thresholds"] = [
        {
            "expr": expr,
            "metric": "latency_ms.ack.p99" if expr.startswith("ack") else "error_rate",
            "value": 3.0 if expr.startswith("ack") else 0.0,
            "limit": 1.0 if expr.startswith("ack") else 0.01,
            "ok": ok,
        }
        for expr, ok in thresholds_ok.items()
    ]
    report["run"] = {
        "exit_code": 0 if all(thresholds_ok.values()) else 3,
        "failure": None,
        "elapsed_s": 12.5,
        "fleet_id": "abcd1234",
        "created": 3,
        "cleaned": True,
    }
    return report


def unsent_run_report() -> dict[str, Any]:
    """`run`'s report when create failed: no send to count."""
    return {
        **_head("run"),
        "thresholds": [],
        "run": {
            "exit_code": 1,
            "failure": "create failed: AccessDenied",
            "elapsed_s": 1.0,
            "fleet_id": None,
            "created": 0,
            "cleaned": True,
        },
    }


def subscribe_report(*, things: int = 2, seconds: int = 5) -> dict[str, Any]:
    """A subscribe that heard every sending thing once a second."""
    report = _common("subscribe", things)
    rows: list[dict[str, Any]] = [
        {"t": float(t), "received": things, "lost": 0, "duplicates": 0, "connected": things}
        for t in range(1, seconds + 1)
    ]
    del rows[-1]["connected"]
    report |= {
        "latency_ms": {"connect": _latency(8.0, 9.0), "end_to_end": _latency(1.5, 2.5, 4.0)},
        "series": rows,
        "messages": {
            "qos": 1,
            "received": things * seconds,
            "unique": things * seconds,
            "lost": 0,
            "duplicates": 0,
            "out_of_order": 0,
            "unstamped": 0,
        },
        "rate": {"achieved_per_s": float(things)},
        "things": [
            {
                "name": f"elf-abcd1234-{i:05d}",
                "received": seconds,
                "unique": seconds,
                "lost": 0,
                "duplicates": 0,
                "out_of_order": 0,
            }
            for i in range(things)
        ],
        "subscribers": [
            {
                "name": f"elf-abcd1234-{i:05d}-watch",
                "topic": f"elf/elf-abcd1234-{i:05d}",
                "received": seconds,
                "reconnects": 0,
                "error": None,
            }
            for i in range(things)
        ],
    }
    return report


def as_v2(report: dict[str, Any]) -> dict[str, Any]:
    """`report` as schema 2 writes it: per-second percentiles and the HDR histograms."""
    v2 = copy.deepcopy(report)
    v2["schema"] = "elf-async/report/2"
    subscribe = v2["command"] == "subscribe"
    names = ("e2e",) if subscribe else ("ack", "lag")
    for n, row in enumerate(v2["series"]):
        for name in names:
            row[f"{name}_p50_ms"] = None if n == 0 else 1.0 + n
            row[f"{name}_p99_ms"] = None if n == 0 else 2.0 + n
    kinds = ("connect", "end_to_end") if subscribe else ("connect", "ack", "ack_from_send", "lag")
    v2["histograms"] = {
        kind: histogram(*(0.5 + i * 0.25 for i in range(200))).encode().decode("ascii")
        for kind in kinds
    }
    return v2
