"""Mutual-TLS connect rate and memory per connection: RSA-2048 against EC P-256 client keys.

For each key type and connection count, a fresh mosquitto (mutual TLS, 127.0.0.1) and a worker
process that opens every connection through elf-async's own Connector (variant ``elf_async``)
or, as a floor, bare uvloop TLS + CONNECT/CONNACK (variant ``asyncio``). Reports connects/s,
client CPU ms per connect, client and broker RSS growth per idle connection, and the EC/RSA
ratios of the same run. JSON on stdout (and --out). The fd limit is raised in-process; the
worker and mosquitto inherit it.

    .venv/bin/python benchmarks/connect.py --counts 500 5000
    .venv/bin/python benchmarks/connect.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from benchmarks._harness import (
    ROOT,
    Pki,
    Processes,
    cpu_seconds,
    machine,
    raise_fd_limit,
    rss_kb,
)
from benchmarks.throughput import read_tagged
from elf_async.broker import Mosquitto


def one_run(
    procs: Processes,
    pki: Pki,
    key_type: str,
    count: int,
    variant: str,
    connect_rate: float,
    workdir: Path,
) -> dict[str, Any]:
    """A fresh broker, one worker, `count` connections; returns the measured row."""
    clients = pki.clients(count, key_type)  # type: ignore[arg-type]
    run_dir = workdir / f"{key_type}-{count}-{variant}"
    broker = Mosquitto.start(directory=run_dir / "broker", ca=pki.ca)
    procs.brokers.append(broker)
    config = {
        "host": broker.host,
        "port": broker.port,
        "ca_file": str(pki.ca_file),
        "clients": [c.as_dict() for c in clients],
        "variant": variant,
        "extra": {"connect_rate": connect_rate},
    }
    config_file = run_dir / "config.json"
    config_file.write_text(json.dumps(config))
    process = procs.spawn(
        [sys.executable, "-m", "benchmarks.peers.connect_worker", str(config_file)],
        stdin=-1,
        stdout=-1,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        read_tagged(process, "READY", timeout=60)
        broker_rss0 = rss_kb(broker.pid)
        broker_cpu0 = cpu_seconds(broker.pid)
        assert process.stdin is not None
        process.stdin.write(b"GO\n")
        process.stdin.flush()
        result = read_tagged(process, "RESULT", timeout=120 + count / 10)
        broker_cpu = cpu_seconds(broker.pid) - broker_cpu0
        broker_rss1 = rss_kb(broker.pid)
        process.stdin.write(b"EXIT\n")
        process.stdin.flush()
        with contextlib.suppress(Exception):
            process.wait(30)
    finally:
        procs.stop(process)
        broker.stop()
        procs.brokers.remove(broker)
    connected = int(result["connected"])
    return {
        "key_type": key_type,
        "connections": count,
        "variant": variant,
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()},
        "broker_cpu_ms_per_connect": round(1000 * broker_cpu / connected, 3) if connected else None,
        "broker_rss_kb_per_connection": (
            round((broker_rss1 - broker_rss0) / connected, 2) if connected else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--key-types", nargs="+", default=["rsa", "ec"], choices=["rsa", "ec"])
    parser.add_argument(
        "--variants", nargs="+", default=["elf_async", "asyncio"], choices=["elf_async", "asyncio"]
    )
    parser.add_argument(
        "--connect-rate", type=float, default=1000.0, help="elf-async Connector's CONNECT rate"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 connections")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # stop children via `finally`
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.quick:
        args.counts = [200]
    limit = raise_fd_limit(max(65536, 4 * max(args.counts) + 1024))
    pki = Pki()
    procs = Processes()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="elf-connect-") as tmp:
            for count in args.counts:
                for variant in args.variants:
                    for key_type in args.key_types:
                        print(f"{count} x {key_type} ({variant})", file=sys.stderr)
                        try:
                            row = one_run(
                                procs, pki, key_type, count, variant, args.connect_rate, Path(tmp)
                            )
                        except (TimeoutError, RuntimeError) as exc:
                            row = {"key_type": key_type, "connections": count, "error": str(exc)}
                        print(f"  {json.dumps(row)}", file=sys.stderr)
                        rows.append(row)
                        time.sleep(1)
    finally:
        procs.close()
    ratios: dict[str, Any] = {}
    for count in args.counts:
        for variant in args.variants:
            pick = {
                r["key_type"]: r
                for r in rows
                if r.get("connections") == count
                and r.get("variant") == variant
                and "error" not in r
            }
            if "rsa" in pick and "ec" in pick and pick["rsa"].get("connects_per_s"):
                ratios[f"{variant}@{count} ec/rsa connects_per_s"] = round(
                    pick["ec"]["connects_per_s"] / pick["rsa"]["connects_per_s"], 3
                )
    report = {
        "benchmark": "elf-async/connect/1",
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "fd_limit": limit,
        "connect_rate": args.connect_rate,
        "runs": rows,
        "ratios": ratios,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
