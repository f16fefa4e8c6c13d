"""How many cores and shards a fleet needs, derived from this project's measured figures and
AWS IoT's default quotas: the README's planning table.

Inputs are benchmark JSON files committed under benchmarks/results/ (nothing is typed in by
hand): two paced `throughput.py` runs of elf-async at different devices x rate, from which a
linear model of the client's CPU is solved (CPU per connected device per second, for keep-alives
and timers, plus CPU per message), and one `connect.py` run for the CPU per connect and the
memory per connection. The quotas are AWS's published defaults (../shared/aws-iot-facts.md).

    python benchmarks/capacity.py --paced A.json B.json --connect C.json --out capacity.json

prints the markdown table and writes the figures and the model as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

# AWS IoT Core defaults, per account and region (adjustable ones say so in the table).
CONNECTS_PER_S = 500  # adjustable
PUBLISHES_PER_S = 20_000  # inbound, adjustable
PER_CONNECTION_PUBLISH_PER_S = 100  # not adjustable
CONCURRENT_CONNECTIONS = 500_000  # adjustable
PROVISIONING_TPS = 15  # CreateThing, AttachThingPrincipal, AttachPolicy: things/s
CORE_BUDGET = 0.7  # plan each core at 70 %: headroom for GC, TLS renegotiation, bursts
SHARD_CORES = 4  # one shard per task of this size (e.g. a Fargate task of 4 vCPU / 8 GB)
SHARD_MEMORY_GB = 8.0
FLEETS = (10_000, 100_000, 1_000_000)
RATES = (1.0, 10.0)


def paced_point(path: Path) -> dict[str, float]:
    """elf-async's run of a paced throughput benchmark: devices, rate, CPU per second."""
    data = json.loads(path.read_text())
    runs = [r for s in data["scenarios"] for r in s["runs"] if r["peer"] == "elf_async"]
    if not runs:
        raise SystemExit(f"{path}: no elf_async run")
    cpu_per_s = sum(r["publisher_cpu_s"] / r["publish_seconds"] for r in runs) / len(runs)
    return {
        "devices": float(data["clients"]),
        "rate": float(data["scenarios"][0]["rate"]),
        "cpu_per_s": cpu_per_s,
    }


def solve(a: dict[str, float], b: dict[str, float]) -> tuple[float, float]:
    """CPU-seconds per device-second and per message from two paced points:
    cpu = devices * per_device + devices * rate * per_message."""
    # [da, da*ra] [x]   [ca]
    # [db, db*rb] [y] = [cb]
    det = a["devices"] * b["devices"] * b["rate"] - a["devices"] * a["rate"] * b["devices"]
    if det == 0:
        raise SystemExit("the two paced runs need different rates to separate the costs")
    per_device = (
        a["cpu_per_s"] * b["devices"] * b["rate"] - a["devices"] * a["rate"] * b["cpu_per_s"]
    ) / det
    per_message = (a["devices"] * b["cpu_per_s"] - b["devices"] * a["cpu_per_s"]) / det
    return max(per_device, 0.0), max(per_message, 0.0)


def connect_costs(path: Path) -> dict[str, float]:
    """CPU ms per connect (the cheapest per-thing key type measured) and KB per idle
    connection at the largest count measured (memory per connection falls with the count)."""
    data = json.loads(path.read_text())
    runs = [r for r in data["runs"] if r.get("variant", "elf_async") == "elf_async"]
    cheapest = min(runs, key=lambda r: r["cpu_ms_per_connect"])
    largest = max(runs, key=lambda r: r["connections"])
    return {
        "key_type": cheapest["key_type"],
        "cpu_ms_per_connect": cheapest["cpu_ms_per_connect"],
        "rss_kb_per_connection": largest["rss_kb_per_connection"],
        "rss_measured_at": largest["connections"],
    }


def plan_row(
    devices: int, rate: float, per_device: float, per_message: float, connect: dict[str, float]
) -> dict[str, Any]:
    publishes = devices * rate
    steady_cores = devices * per_device + publishes * per_message
    cores = max(1, math.ceil(steady_cores / CORE_BUDGET))
    memory_gb = devices * connect["rss_kb_per_connection"] / 1024 / 1024
    connect_s = devices / CONNECTS_PER_S
    # While connecting at the account's pace, the client needs this many cores for the TLS work.
    connect_cores = CONNECTS_PER_S * connect["cpu_ms_per_connect"] / 1000 / CORE_BUDGET
    shards = max(math.ceil(cores / SHARD_CORES), math.ceil(memory_gb / (SHARD_MEMORY_GB * 0.8)))
    increases = []
    if publishes > PUBLISHES_PER_S:
        increases.append(f"publishes {publishes:,.0f}/s > {PUBLISHES_PER_S:,}/s")
    if devices > CONCURRENT_CONNECTIONS:
        increases.append(f"connections {devices:,} > {CONCURRENT_CONNECTIONS:,}")
    return {
        "devices": devices,
        "rate_per_device": rate,
        "publishes_per_s": publishes,
        "steady_cores": round(steady_cores, 2),
        "cores": cores,
        "shards": shards,
        "connect_cores": round(connect_cores, 2),
        "memory_gb": round(memory_gb, 1),
        "connect_ramp_s": round(connect_s),
        "create_hours_per_thing_identity": round(devices / PROVISIONING_TPS / 3600, 1),
        "quota_increases": increases,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| devices | msg/s each | publishes/s | client cores (at 70 %) | client memory | "
        f"shards of {SHARD_CORES} cores / {SHARD_MEMORY_GB:g} GB | connect ramp at 500/s | "
        "`create` with --identity thing | quota increase needed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']:,} | {r['rate_per_device']:g} | {r['publishes_per_s']:,.0f} | "
            f"{r['cores']:,} | {r['memory_gb']:g} GB | {r['shards']:,} | "
            f"{r['connect_ramp_s']:,} s | "
            f"{r['create_hours_per_thing_identity']:g} h | "
            f"{'; '.join(r['quota_increases']) or 'none'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paced", type=Path, nargs=2, required=True, metavar="JSON")
    parser.add_argument("--connect", type=Path, required=True, metavar="JSON")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    points = [paced_point(path) for path in args.paced]
    per_device, per_message = solve(*points)
    connect = connect_costs(args.connect)
    rows = [
        plan_row(devices, rate, per_device, per_message, connect)
        for devices in FLEETS
        for rate in RATES
    ]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "elf-async/capacity/1",
                    "inputs": {"paced": [str(p) for p in args.paced], "connect": str(args.connect)},
                    "paced_points": points,
                    "model": {
                        "cpu_s_per_device_second": per_device,
                        "cpu_s_per_message": per_message,
                        **connect,
                        "core_budget": CORE_BUDGET,
                    },
                    "rows": rows,
                    "markdown": table,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
