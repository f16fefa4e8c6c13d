"""Publish throughput of elf-async against other Python MQTT publishers, side by side.

One invocation starts a mutual-TLS mosquitto on 127.0.0.1 and an independent counting subscriber
(mosquitto_sub), then runs every publisher in its own process, alternating (ABAB...) so machine
noise hits all of them alike, over the same clients, QoS, payload and duration. Per run it
records msg/s published, msg/s the subscriber received, the publisher's CPU seconds (its process
and every process under it, from /proc between GO and RESULT), messages per CPU-second, and the
broker's and subscriber's CPU so a saturated broker or subscriber is visible. `--workers 1 2`
adds `send --workers 2` (peer `elf_async:w2`) next to the in-process elf_async. JSON on stdout
(and --out).

    .venv/bin/python benchmarks/throughput.py --quick
    .venv/bin/python benchmarks/throughput.py --clients 500 --seconds 10 --rounds 3
    .venv/bin/python benchmarks/throughput.py --paced --clients 500 --rate 10 --seconds 60
    .venv/bin/python benchmarks/throughput.py --peers elf_async --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
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
    BrokerCounter,
    ClientFiles,
    CountingSubscriber,
    Pki,
    Processes,
    cpu_seconds,
    machine,
    raise_fd_limit,
    settled_count,
    tree_cpu_seconds,
    wait_settled,
)
from elf_async.local.mosquitto import Mosquitto

PEERS: dict[str, str] = {
    "paho": "benchmarks.peers.paho_bare",
    "aiomqtt_naive": "benchmarks.peers.aiomqtt_naive",
    "gmqtt": "benchmarks.peers.gmqtt_pub",
    "aiomqtt_fast": "benchmarks.peers.aiomqtt_fast",
    "elf_async": "benchmarks.peers.elf_async_send",
}
DEFAULT_PEERS = ["paho", "aiomqtt_naive", "gmqtt", "aiomqtt_fast", "elf_async"]
WORKERS_PEER = "benchmarks.peers.elf_async_workers"


def elf_async_workers(peer: str) -> int | None:
    """How many `send --workers` processes an elf_async peer spec stands for: `elf_async` is
    the in-process `Sender` (what `send --workers 1` runs), `elf_async:wN` is N workers."""
    if peer == "elf_async":
        return 1
    name, _, variant = peer.partition(":")
    if name == "elf_async" and variant[:1] == "w" and variant[1:].isdigit():
        return int(variant[1:])
    return None


def with_workers(peers: list[str], counts: list[int]) -> list[str]:
    """`peers` with elf_async run once per worker count (in its place, or at the end)."""
    runs = ["elf_async" if n == 1 else f"elf_async:w{n}" for n in dict.fromkeys(counts)]
    rest = [p for p in peers if p not in runs and p != "elf_async"]
    if "elf_async" not in peers:
        return rest + runs
    at = len([p for p in peers[: peers.index("elf_async")] if p in rest])
    return rest[:at] + runs + rest[at:]


def read_tagged(process: Any, tag: str, timeout: float) -> dict[str, Any]:
    """Read the peer's stdout until a line `TAG {json}` (other lines are echoed to stderr)."""
    deadline = time.monotonic() + timeout
    stream = process.stdout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {tag} from peer within {timeout:.0f}s")
        ready, _, _ = select.select([stream], [], [], min(remaining, 1.0))
        if not ready:
            if process.poll() is not None:
                raise RuntimeError(f"peer exited with {process.returncode} before {tag}")
            continue
        line = stream.readline()
        if not line:
            raise RuntimeError(f"peer closed stdout before {tag} (exit {process.wait()})")
        text = line.decode(errors="replace").rstrip()
        if text.startswith(tag + " "):
            return dict(json.loads(text[len(tag) + 1 :]))
        print(f"  [peer] {text}", file=sys.stderr)


def run_peer(
    procs: Processes,
    broker: Mosquitto,
    subscriber: list[CountingSubscriber],
    counter: BrokerCounter | None,
    peer: str,
    clients: list[ClientFiles],
    ca_file: Path,
    scenario: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    """One run of one publisher: connect (untimed), GO, publish, drain, count what arrived."""
    config = {
        "host": broker.host,
        "port": broker.port,
        "ca_file": str(ca_file),
        "clients": [c.as_dict() for c in clients],
        "qos": scenario["qos"],
        "seconds": scenario["seconds"],
        "payload_size": scenario["payload_size"],
        "rate": scenario.get("rate"),
        "variant": scenario.get("variants", {}).get(peer, ""),
        # Read by the elf_async peers: their open-loop "flat out" schedule per client.
        "extra": {"flat_out_rate": rate} if (rate := scenario.get("flat_out_rate")) else {},
    }
    config_file = workdir / f"{peer}.json"
    config_file.write_text(json.dumps(config))
    # `elf_async:wN` is `send --workers N`: a peer module of its own.
    module = WORKERS_PEER if peer.startswith("elf_async:") else PEERS[peer.split(":")[0]]
    if ":" in peer:
        config["variant"] = peer.split(":", 1)[1]
        config_file.write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = procs.spawn(
        [sys.executable, "-m", module, str(config_file)],
        stdin=-1,
        stdout=-1,
        cwd=str(ROOT),
        env=env,
    )
    try:
        ready = read_tagged(process, "READY", timeout=120 + len(clients) / 20)
        time.sleep(0.5)  # let connect-phase stragglers (CONNACK handling) finish
        received0 = sum(s.count for s in subscriber)
        # Nothing publishes between runs: any $SYS value since the last run settled is exact.
        broker_received0 = counter.fresh(after=counter.quiet_since) if counter else None
        # The peer and every process under it (`elf_async:wN` workers): see tree_cpu_seconds.
        cpu0, kin = tree_cpu_seconds(process.pid)
        procs.watch(process, kin)
        broker_cpu0 = cpu_seconds(broker.pid)
        sub_cpu0 = sum(s.cpu() for s in subscriber)
        wall0 = time.monotonic()
        assert process.stdin is not None
        process.stdin.write(b"GO\n")
        process.stdin.flush()
        spy = None
        if scenario.get("profile_dir"):
            # Sampling costs CPU on a small machine: profile runs are not measurement runs.
            out = Path(scenario["profile_dir"]) / f"{peer.replace(':', '-')}-qos{scenario['qos']}"
            out.parent.mkdir(parents=True, exist_ok=True)
            spy = procs.spawn(
                ["py-spy", "record", "--pid", str(process.pid), "--native", "--rate", "250",
                 "--duration", str(max(1, int(scenario["seconds"]) - 1)), "--format", "raw",
                 *(["--subprocesses"] if kin else []), "-o", f"{out}.txt"],
                stdout=-3, stderr=-3,
                env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
            )  # fmt: skip
        result = read_tagged(process, "RESULT", timeout=scenario["seconds"] + 60)
        cpu1, kin1 = tree_cpu_seconds(process.pid)
        procs.watch(process, kin1)
        wall1 = time.monotonic()
        broker_cpu1 = cpu_seconds(broker.pid)
        sub_cpu1 = sum(s.cpu() for s in subscriber)
        wait_settled(lambda: sum(s.count for s in subscriber))
        if spy is not None:
            spy.wait(30)
        received = sum(s.count for s in subscriber) - received0
        settled_at = time.monotonic()
        broker_received1 = None
        if counter:
            broker_received1 = counter.fresh(after=settled_at)
            if (
                broker_received0 is not None
                and broker_received1 is not None
                and broker_received1 - broker_received0 != int(result["published"])
            ):
                broker_received1 = settled_count(counter, after=settled_at)
        if counter:
            counter.quiet_since = settled_at
        process.stdin.write(b"EXIT\n")
        process.stdin.flush()
        with contextlib.suppress(Exception):
            process.wait(15)
    finally:
        procs.stop(process)
    cpu = cpu1 - cpu0
    seconds = float(result["publish_seconds"])
    published = int(result["published"])
    window = wall1 - wall0
    row: dict[str, Any] = {
        "peer": peer,
        "connected": ready.get("connected"),
        "connect_failed": ready.get("failed"),
        "published": published,
        "acked": result.get("acked"),
        "received": received,
        "received_ratio": round(received / published, 5) if published else None,
        "broker_received": (
            broker_received1 - broker_received0
            if broker_received0 is not None and broker_received1 is not None
            else None
        ),
        "publish_seconds": round(seconds, 3),
        "msg_per_s": round(published / seconds, 1) if seconds else None,
        "received_per_s": round(received / seconds, 1) if seconds else None,
        "publisher_processes": 1 + len(kin),
        "publisher_cpu_s": round(cpu, 3),
        "publisher_self_cpu_s": round(float(result.get("self_cpu", 0.0)), 3),
        "msg_per_cpu_s": round(published / cpu, 1) if cpu > 0 else None,
        "publisher_cpu_pct": round(100 * cpu / window, 1) if window else None,
        "broker_cpu_pct": round(100 * (broker_cpu1 - broker_cpu0) / window, 1),
        "subscriber_cpu_pct": round(100 * (sub_cpu1 - sub_cpu0) / window, 1),
        "drain_seconds": round(float(result.get("drain_seconds", 0.0)), 3),
    }
    if scenario.get("rate"):
        target = scenario["rate"] * len(clients) * scenario["seconds"]
        row["target"] = target
        row["achieved_over_target"] = round(published / target, 5) if target else None
        row["lag_ms"] = result.get("lag_ms")
    for key in ("ack_ms", "extra"):
        if key in result:
            row[key] = result[key]
    return row


def summarize(rows: list[dict[str, Any]], peers: list[str], focus: list[str]) -> dict[str, Any]:
    """Medians per peer over the rounds, and ratios of each focus publisher to every other."""
    summary: dict[str, Any] = {}
    for peer in peers:
        mine = [r for r in rows if r["peer"] == peer and r.get("msg_per_s")]
        if not mine:
            continue
        summary[peer] = {
            "runs": len(mine),
            "msg_per_s": round(statistics.median(r["msg_per_s"] for r in mine), 1),
            "received_per_s": round(statistics.median(r["received_per_s"] for r in mine), 1),
            "msg_per_cpu_s": round(
                statistics.median(r["msg_per_cpu_s"] for r in mine if r["msg_per_cpu_s"]), 1
            ),
            "received_ratio_min": min(r["received_ratio"] for r in mine),
            "publisher_cpu_pct": round(statistics.median(r["publisher_cpu_pct"] for r in mine), 1),
            "broker_cpu_pct": round(statistics.median(r["broker_cpu_pct"] for r in mine), 1),
            "subscriber_cpu_pct": round(
                statistics.median(r["subscriber_cpu_pct"] for r in mine), 1
            ),
        }
        if any("achieved_over_target" in r for r in mine):
            summary[peer]["achieved_over_target"] = min(r["achieved_over_target"] for r in mine)
            summary[peer]["lag_p99_ms_max"] = max(
                (r.get("lag_ms") or {}).get("p99", float("nan")) for r in mine
            )
    ratios: dict[str, Any] = {}
    for me in focus:
        if me not in summary:
            continue
        for other in summary:
            if other == me:
                continue
            ratios[f"{me}/{other}"] = {
                "msg_per_s": round(summary[me]["msg_per_s"] / summary[other]["msg_per_s"], 3),
                "msg_per_cpu_s": round(
                    summary[me]["msg_per_cpu_s"] / summary[other]["msg_per_cpu_s"], 3
                ),
            }
    # `send --workers N` against one process (the in-process peer: what --workers 1 runs).
    if "elf_async" in summary:
        one = summary["elf_async"]
        for peer, mine in summary.items():
            n = elf_async_workers(peer)
            if n is None or n == 1:  # `elf_async:w1` is in the ratios above
                continue
            ratios[f"elf_async({n} workers)/elf_async(1 worker)"] = {
                key: round(mine[key] / one[key], 3)
                for key in ("msg_per_s", "msg_per_cpu_s", "received_per_s")
            }
    return {"per_peer": summary, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--qos", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    parser.add_argument("--rounds", type=int, default=2, help="ABAB... rounds per scenario")
    parser.add_argument("--payload-size", type=int, default=100)
    parser.add_argument("--peers", nargs="+", default=None, help=f"default: {DEFAULT_PEERS}")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="run elf_async once per count: 1 = in-process, N > 1 = `send --workers N` "
        "(peer elf_async:wN); e.g. --workers 1 2",
    )
    parser.add_argument("--key-type", choices=["rsa", "ec"], default="rsa")
    parser.add_argument(
        "--subscribers", type=int, default=4, help="mosquitto_sub processes sharing the count"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 100 clients x 5 s, 1 round"
    )
    parser.add_argument("--paced", action="store_true", help="the paced headline case instead")
    parser.add_argument("--rate", type=float, default=10.0, help="paced: msg/s per client")
    parser.add_argument(
        "--flat-out-rate",
        type=float,
        default=100.0,
        help="flat out: elf-async's open-loop schedule, msg/s per client (default AWS's 100/s; "
        "500 clients x 100/s is within one process's reach: raise it to find elf-async's limit)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument(
        "--no-broker-count",
        action="store_true",
        help="skip the $SYS cross-check (it waits up to sys_interval, 10 s, per run)",
    )
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="profile each peer (collapsed stacks) into DIR"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # Ctrl-C or SIGTERM: unwind through `finally` so every child is stopped by PID. (A shell
    # starts background jobs with SIGINT ignored; restore the default handler.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.quick:
        args.clients, args.seconds, args.rounds = 100, 5.0, 1
    peers = args.peers or list(DEFAULT_PEERS)
    if args.paced:
        peers = args.peers or [p for p in ("elf_async", "aiomqtt_fast", "gmqtt") if p in peers]
        args.qos = [1] if args.qos == [0, 1] else args.qos
    if args.workers:
        if min(args.workers) < 1:
            parser.error("--workers: counts of at least 1")
        peers = with_workers(peers, args.workers)
    raise_fd_limit()
    pki = Pki(args.cache_dir) if args.cache_dir else Pki()
    clients = pki.clients(args.clients, args.key_type)
    sub_files = pki.clients(args.subscribers, "ec", prefix="bench-sub")
    procs = Processes()
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "benchmark": "elf-async/throughput/1",
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "clients": args.clients,
        "key_type": args.key_type,
        "payload_size": args.payload_size,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "peers": peers,
        "scenarios": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="elf-bench-") as tmp:
            workdir = Path(tmp)
            broker = Mosquitto.start(directory=workdir / "broker", ca=pki.ca)
            procs.brokers.append(broker)
            counter = None
            if not args.no_broker_count:
                sys_files = pki.clients(1, "ec", prefix="bench-sys")[0]
                counter = BrokerCounter(procs, broker, sys_files, pki.ca_file)
            for qos in args.qos:
                scenario: dict[str, Any] = {
                    "qos": qos,
                    "seconds": args.seconds,
                    "payload_size": args.payload_size,
                    "rate": args.rate if args.paced else None,
                    "flat_out_rate": None if args.paced else args.flat_out_rate,
                    "profile_dir": str(args.py_spy) if args.py_spy else None,
                }
                topic = "bench/#" if args.subscribers == 1 else "$share/count/bench/#"
                subscriber = [
                    CountingSubscriber(procs, broker, f, pki.ca_file, topic, qos) for f in sub_files
                ]
                time.sleep(1.0)
                rows = []
                for round_no in range(args.rounds):
                    for peer in peers:
                        print(f"qos {qos} round {round_no + 1}: {peer}", file=sys.stderr)
                        try:
                            row = run_peer(
                                procs,
                                broker,
                                subscriber,
                                counter,
                                peer,
                                clients,
                                pki.ca_file,
                                scenario,
                                workdir,
                            )
                        except (TimeoutError, RuntimeError) as exc:
                            row = {"peer": peer, "error": str(exc)}
                        row["round"] = round_no + 1
                        print(f"  {json.dumps(row)}", file=sys.stderr)
                        rows.append(row)
                for sub in subscriber:
                    procs.stop(sub.process)
                ok_rows = [r for r in rows if "error" not in r]
                report["scenarios"].append(
                    {
                        "name": ("paced" if args.paced else "flat_out") + f"_qos{qos}",
                        **scenario,
                        "runs": rows,
                        "summary": summarize(
                            ok_rows,
                            peers,
                            [p for p in peers if p.startswith(("elf_async", "aiomqtt_fast"))],
                        ),
                    }
                )
    finally:
        procs.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
