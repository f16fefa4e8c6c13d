"""Mutual-TLS connect rate and memory per connection: RSA-2048 against EC P-256 client keys.

For each key type and connection count, a fresh mosquitto (mutual TLS, 127.0.0.1) and a worker
process that opens every connection through elf-async's own Connector (variant ``elf_async``:
a certificate per client; ``shared``: one certificate and key for all, as
``create --identity shared``) or, as a floor, bare uvloop TLS + CONNECT/CONNACK (variant
``asyncio``). Reports connects/s, client CPU ms per connect, client and broker RSS growth per
idle connection, and the EC/RSA ratios of the same run. JSON on stdout (and --out). The fd
limit is raised in-process; the worker and mosquitto inherit it.

``--baseline REV`` runs each elf-async variant twice per round, with this tree's code
(``code: current``) and with the elf_async package of git revision REV (``code: baseline``,
first on the worker's PYTHONPATH), in alternating order, so that before and after share the
machine's noise; ``ratios`` then gives current/baseline client CPU per connect.

Each row also gives the rates the CPU allows: ``broker_bound`` (mosquitto is one thread) and
``cpu_bound`` (all cores busy with client and broker, nothing else running); a rate ratio
cannot beat the ratio of those. ``phases`` (--phases N, 0 for none) is where the client's CPU
goes in one connect, measured one connection at a time in this process (thread CPU time, no
contention) through elf-async's own TLS setup (`elf_async.dataplane.mqtt.ClientTls`, a shared
identity's TLS session kept as the Connector keeps it), next to what a context of its own per
thing costs (``own_context_ms``, the design before); ``shared: true`` rows use one identity.

    .venv/bin/python benchmarks/connect.py --counts 500 5000
    .venv/bin/python benchmarks/connect.py --counts 500 --variants elf_async shared \\
        --baseline f44373f --rounds 2
    .venv/bin/python benchmarks/connect.py --quick
    .venv/bin/python benchmarks/connect.py --counts 1000 5000 20000 --key-types ec \
        --variants elf_async --phases 0 --keepalive 30 --idle 60

``--idle S`` adds an idle soak after connecting (connections taken over as `send` holds them)
and reports the client's CPU for keep-alives, the keep-alive pass as it is against every
connection every second, alternated on the same connections; a count above what
RLIMIT_NOFILE's hard limit can hold is measured at what it can hold (``clamped_by_fd_limit``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from benchmarks._harness import (
    ROOT,
    ClientFiles,
    Pki,
    Processes,
    baseline_tree,
    cpu_seconds,
    machine,
    raise_fd_limit,
    rss_kb,
)
from benchmarks.throughput import read_tagged
from elf_async.dataplane.mqtt import ClientTls
from elf_async.local.mosquitto import Mosquitto

FD_HEADROOM = 100  # descriptors a process needs besides its connections


def _connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s."""
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(variable)]) + variable


def _one_identity(clients: list[ClientFiles]) -> list[ClientFiles]:
    """Every client on the first one's certificate and key, each with its own client id."""
    return [ClientFiles(c.id, clients[0].cert, clients[0].key) for c in clients]


def phases(
    pki: Pki, key_type: str, count: int, workdir: Path, *, shared: bool = False
) -> dict[str, Any]:
    """Client CPU ms per step of a connect, `count` connections one after the other."""
    clients = pki.clients(count, key_type)  # type: ignore[arg-type]
    if shared:
        clients = _one_identity(clients)
    broker = Mosquitto.start(directory=workdir / f"phases-{key_type}-{shared}", ca=pki.ca)
    ca_pem = pki.ca_file.read_text()
    clock = time.thread_time
    spent = dict.fromkeys(("tcp_ms", "chain_and_ssl_ms", "handshake_ms", "connack_ms"), 0.0)
    own = 0.0
    keep: list[ssl.SSLSocket] = []
    try:
        tls = ClientTls(ca_pem=ca_pem, alpn=False)
        for spec in clients:
            start = clock()
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
            context.load_cert_chain(spec.cert, spec.key)
            own += clock() - start
            del context
            thing = tls.identity(cert_file=Path(spec.cert), key_file=Path(spec.key), shared=shared)
            t0 = clock()
            sock = socket.create_connection((broker.host, broker.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t1 = clock()
            tls_sock, slot = thing.wrap(sock, server_hostname=broker.host)
            t2 = clock()
            tls_sock.do_handshake()
            t3 = clock()
            tls_sock.sendall(_connect_packet(spec.id))
            if tls_sock.recv(4)[:1] != b"\x20":
                raise RuntimeError(f"{spec.id}: no CONNACK")
            t4 = clock()
            thing.keep_session(slot, tls_sock)
            keep.append(tls_sock)
            for key, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[key] += seconds
        version = keep[-1].version() if keep else None
        resumed = sum(bool(s.session_reused) for s in keep)
    finally:
        for tls_sock in keep:
            tls_sock.close()
        broker.stop()
    row: dict[str, Any] = {k: round(1000 * v / count, 3) for k, v in spent.items()}
    row["total_ms"] = round(sum(row.values()), 3)
    row["own_context_ms"] = round(1000 * own / count, 3)
    row["resumed"] = resumed
    return {"key_type": key_type, "shared": shared, "connections": count, "tls": version, **row}


def one_run(
    procs: Processes,
    pki: Pki,
    key_type: str,
    count: int,
    variant: str,
    connect_rate: float,
    workdir: Path,
    code: Path | None = None,
    idle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A fresh broker, one worker, `count` connections; returns the measured row. `code`: an
    elf_async tree to run instead of this one's (the baseline). `idle` (keepalive, idle_s,
    tracemalloc) goes to the worker: an idle soak after connecting."""
    idle = idle or {}
    clients = pki.clients(count, key_type)  # type: ignore[arg-type]
    if variant == "shared":
        clients = _one_identity(clients)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{key_type}-{count}-{variant}-", dir=workdir))
    broker = Mosquitto.start(directory=run_dir / "broker", ca=pki.ca)
    procs.brokers.append(broker)
    config = {
        "host": broker.host,
        "port": broker.port,
        "ca_file": str(pki.ca_file),
        "clients": [c.as_dict() for c in clients],
        "variant": variant,
        "extra": {"connect_rate": connect_rate, **idle},
    }
    config_file = run_dir / "config.json"
    config_file.write_text(json.dumps(config))
    process = procs.spawn(
        [sys.executable, "-m", "benchmarks.peers.connect_worker", str(config_file)],
        stdin=-1,
        stdout=-1,
        cwd=str(code or ROOT),
        env=dict(os.environ, PYTHONPATH=str(code or ROOT)),
    )
    try:
        read_tagged(process, "READY", timeout=60)
        broker_rss0 = rss_kb(broker.pid)
        broker_cpu0 = cpu_seconds(broker.pid)
        assert process.stdin is not None
        process.stdin.write(b"GO\n")
        process.stdin.flush()
        result = read_tagged(
            process, "RESULT", timeout=120 + count / 10 + float(idle.get("idle_s", 0))
        )
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
    client_ms = result.get("cpu_ms_per_connect") or 0.0
    broker_ms = 1000 * broker_cpu / connected if connected else 0.0
    return {
        "key_type": key_type,
        "connections": count,
        "variant": variant,
        "code": "baseline" if code else "current",
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()},
        "broker_cpu_ms_per_connect": round(1000 * broker_cpu / connected, 3) if connected else None,
        "broker_rss_kb_per_connection": (
            round((broker_rss1 - broker_rss0) / connected, 2) if connected else None
        ),
        "broker_bound_connects_per_s": round(1000 / broker_ms, 1) if broker_ms else None,
        "cpu_bound_connects_per_s": (
            round(1000 * (os.cpu_count() or 1) / (client_ms + broker_ms), 1)
            if client_ms + broker_ms
            else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--key-types", nargs="+", default=["rsa", "ec"], choices=["rsa", "ec"])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["elf_async", "shared", "asyncio"],
        choices=["elf_async", "shared", "asyncio"],
    )
    parser.add_argument(
        "--baseline", default=None, help="git revision: also run its elf_async, alternating"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--connect-rate", type=float, default=1000.0, help="elf-async Connector's CONNECT rate"
    )
    parser.add_argument(
        "--phases", type=int, default=200, help="connections for the per-step CPU split (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 connections")
    parser.add_argument("--keepalive", type=int, default=60, help="MQTT keep-alive, seconds")
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        help="after connecting, an idle soak this long (elf_async variant, connections taken "
        "over as `send` holds them): the client's CPU for keep-alives",
    )
    parser.add_argument(
        "--trim",
        action="store_true",
        help="RSS again after glibc's malloc_trim(0): what is held per connection against "
        "what malloc keeps free",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="Python allocations held per connection, by source line (slows the connects)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # stop children via `finally`
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.quick:
        args.counts = [200]
    limit = raise_fd_limit(max(65536, 4 * max(args.counts) + 1024))
    # The client and mosquitto each hold one descriptor per connection, plus their own files:
    # a count the hard limit cannot hold is measured at what it can (and the report says so).
    reachable = limit - FD_HEADROOM
    clamped = {c: min(c, reachable) for c in args.counts if c > reachable}
    args.counts = [min(c, reachable) for c in args.counts]
    idle = {
        "keepalive": args.keepalive,
        "idle_s": args.idle,
        "tracemalloc": args.tracemalloc,
        "trim": args.trim,
    }
    pki = Pki()
    procs = Processes()
    rows: list[dict[str, Any]] = []
    split: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="elf-connect-") as tmp:
            base = baseline_tree(args.baseline, Path(tmp) / "baseline") if args.baseline else None
            for key_type in args.key_types if args.phases > 0 else []:
                for shared in (False, True) if "shared" in args.variants else (False,):
                    split.append(phases(pki, key_type, args.phases, Path(tmp), shared=shared))
                    print(f"phases {json.dumps(split[-1])}", file=sys.stderr)
            for round_no in range(args.rounds):
                for count in args.counts:
                    for variant in args.variants:
                        codes: list[Path | None] = [None]
                        if base is not None and variant != "asyncio":
                            codes = [base, None] if round_no % 2 == 0 else [None, base]
                        for key_type in args.key_types:
                            for code in codes:
                                label = "baseline" if code else "current"
                                print(f"{count} x {key_type} ({variant}, {label})", file=sys.stderr)
                                try:
                                    row = one_run(
                                        procs,
                                        pki,
                                        key_type,
                                        count,
                                        variant,
                                        args.connect_rate,
                                        Path(tmp),
                                        code,
                                        idle,
                                    )
                                except (TimeoutError, RuntimeError) as exc:
                                    row = {
                                        "key_type": key_type,
                                        "connections": count,
                                        "variant": variant,
                                        "code": label,
                                        "error": str(exc),
                                    }
                                row["round"] = round_no + 1
                                print(f"  {json.dumps(row)}", file=sys.stderr)
                                rows.append(row)
                                time.sleep(1)
    finally:
        procs.close()
    ratios: dict[str, Any] = {}
    ok = [r for r in rows if "error" not in r]

    def median(count: int, variant: str, key_type: str, code: str, field: str) -> float | None:
        values = [
            r[field]
            for r in ok
            if (r["connections"], r["variant"], r["key_type"], r.get("code"))
            == (
                count,
                variant,
                key_type,
                code,
            )
            and r.get(field)
        ]
        return statistics.median(values) if values else None

    for count in args.counts:
        for variant in args.variants:
            rsa = median(count, variant, "rsa", "current", "connects_per_s")
            ec = median(count, variant, "ec", "current", "connects_per_s")
            if rsa and ec:
                ratios[f"{variant}@{count} ec/rsa connects_per_s"] = round(ec / rsa, 3)
            rsa = median(count, variant, "rsa", "current", "cpu_bound_connects_per_s")
            ec = median(count, variant, "ec", "current", "cpu_bound_connects_per_s")
            if rsa and ec:
                ratios[f"{variant}@{count} ec/rsa cpu_bound"] = round(ec / rsa, 3)
            for key_type in args.key_types:
                now = median(count, variant, key_type, "current", "cpu_ms_per_connect")
                before = median(count, variant, key_type, "baseline", "cpu_ms_per_connect")
                if now and before:
                    ratios[f"{variant}@{count} {key_type} current/baseline cpu_ms_per_connect"] = (
                        round(now / before, 3)
                    )
    report = {
        "benchmark": "elf-async/connect/2",
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "fd_limit": limit,
        "clamped_by_fd_limit": clamped,
        "keepalive": args.keepalive,
        "connect_rate": args.connect_rate,
        "baseline": args.baseline,
        "runs": rows,
        "ratios": ratios,
        "phases": split,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
