"""Publish throughput of elf-async against other MQTT publishers, side by side.

One invocation starts a mutual-TLS mosquitto on 127.0.0.1 and an independent counting subscriber
(mosquitto_sub), then runs every publisher in its own process, alternating (ABAB...) so machine
noise hits all of them alike, over the same clients, QoS, payload, duration and load model (an
open loop per client: `--rate` when paced, `--flat-out-rate`, above every peer's reach, flat
out). Per run it records msg/s published (in the kernel by the stop), msg/s the subscribers
received, the publisher's CPU seconds (its process and every process under it, from /proc
between GO and RESULT), messages per CPU-second, and the broker's and subscribers' CPU so a
saturated broker or subscriber is visible; before the next run the broker must be idle again.
`--workers 1 2` adds `send --workers 2` (peer `elf_async:w2`) next to the in-process elf_async.
`--baseline REV` adds peer `elf_async@base`: the same in-process peer with the elf_async package
of git revision REV, alternated with this tree's, so before and after share the machine's noise.
JSON on stdout (and --out).

    .venv/bin/python benchmarks/throughput.py --quick
    .venv/bin/python benchmarks/throughput.py --clients 500 --seconds 10 --rounds 3
    .venv/bin/python benchmarks/throughput.py --paced --clients 500 --rate 10 --seconds 60
    .venv/bin/python benchmarks/throughput.py --peers elf_async --workers 1 2 --rounds 3
    .venv/bin/python benchmarks/throughput.py --paced --clients 2000 --rate 1 --peers elf_async \
        --baseline HEAD~3 --rounds 2
    .venv/bin/python benchmarks/throughput.py --peers elf_async --mqtt5 --rounds 3

`--mqtt5` adds `elf_async:mqtt5` (`send --mqtt 5`, no property: what the version costs) and
`elf_async:mqtt5props` (a user property and the topic alias) next to the in-process elf_async,
in the same run; the ratios say what MQTT 5 costs against 3.1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
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
    baseline_tree,
    cpu_seconds,
    machine,
    raise_fd_limit,
    settled_count,
    tree_cpu_seconds,
    wait_idle,
    wait_settled,
)
from elf_async.local.mosquitto import Mosquitto

PEERS: dict[str, str] = {
    "paho": "benchmarks.peers.paho_bare",
    "aiomqtt_naive": "benchmarks.peers.aiomqtt_naive",
    "gmqtt": "benchmarks.peers.gmqtt_pub",
    "aiomqtt_fast": "benchmarks.peers.aiomqtt_fast",
    "elf_async": "benchmarks.peers.elf_async_send",
    # The same in-process send over MQTT over WebSocket (mosquitto's WebSocket listener, TLS):
    # what --transport wss costs against mqtts, measured in the same rounds.
    "elf_async_wss": "benchmarks.peers.elf_async_send",
    "mqttjs": "benchmarks/peers/mqttjs/pub.mjs",  # Node, not a Python module
    # Not a client: raw ssl sockets and hand-framed MQTT, the least a Python publisher spends.
    "ssl_floor": "benchmarks.peers.ssl_floor",
}
DEFAULT_PEERS = ["paho", "aiomqtt_naive", "gmqtt", "mqttjs", "aiomqtt_fast", "elf_async"]
WORKERS_PEER = "benchmarks.peers.elf_async_workers"
MQTTJS_DIR = ROOT / "benchmarks" / "peers" / "mqttjs"
SCHEDULE_BOUND = 0.95  # flat out: a peer this close to the offered rate was held by it
BASELINE = "@base"  # a peer's suffix: run with the baseline revision's elf_async


def peer_argv(peer: str, config_file: Path) -> list[str]:
    """The command that runs one peer; `elf_async:wN` is `send --workers N`, its own module."""
    if peer == "mqttjs":
        return ["node", str(ROOT / PEERS["mqttjs"]), str(config_file)]
    peer = peer.removesuffix(BASELINE)
    workers = elf_async_workers(peer) is not None and ":" in peer
    module = WORKERS_PEER if workers else PEERS[peer.split(":")[0]]
    return [sys.executable, "-m", module, str(config_file)]


def ensure_mqttjs() -> None:
    """MQTT.js from the committed lockfile into benchmarks/peers/mqttjs/node_modules, once."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("throughput.py: the mqttjs peer needs Node.js and npm (or drop mqttjs)")
    if (MQTTJS_DIR / "node_modules" / "mqtt" / "package.json").exists():
        return
    print(f"installing MQTT.js (npm ci in {MQTTJS_DIR})", file=sys.stderr)
    subprocess.run(  # its output on stderr: stdout is the JSON document
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=MQTTJS_DIR,
        stdout=sys.stderr,
        check=True,
    )


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


def with_mqtt5(peers: list[str]) -> list[str]:
    """`peers` with the MQTT 5 variants of the in-process elf_async right after it (and it
    added, to measure them against)."""
    variants = ["elf_async:mqtt5", "elf_async:mqtt5props"]
    rest = [p for p in peers if p not in variants]
    if "elf_async" not in rest:
        rest.append("elf_async")
    at = rest.index("elf_async") + 1
    return rest[:at] + variants + rest[at:]


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
    baseline: Path | None = None,
) -> dict[str, Any]:
    """One run of one publisher: connect (untimed), GO, publish, drain, count what arrived.
    A `BASELINE` peer runs in `baseline` (a tree with the baseline's elf_async)."""
    wss = peer == "elf_async_wss"
    assert broker.listeners is not None  # the harness's broker has them
    config = {
        "host": broker.host,
        "port": broker.listeners.websocket if wss else broker.port,
        "ca_file": str(ca_file),
        "clients": [c.as_dict() for c in clients],
        "qos": scenario["qos"],
        "seconds": scenario["seconds"],
        "payload_size": scenario["payload_size"],
        # One load model for every peer: open loop at `rate` per client (flat out: above reach).
        "rate": scenario["rate"],
        "paced": scenario["paced"],
        "variant": peer.removesuffix(BASELINE).split(":", 1)[1] if ":" in peer else "",
        "extra": {"transport": "wss"} if wss else {},
    }
    config_file = workdir / f"{peer.replace(':', '-')}.json"
    config_file.write_text(json.dumps(config))
    tree = baseline if peer.endswith(BASELINE) and baseline is not None else ROOT
    env = dict(os.environ, PYTHONPATH=str(tree))
    process = procs.spawn(
        peer_argv(peer, config_file),
        stdin=-1,
        stdout=-1,
        cwd=str(tree),
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
        published = int(result["published"])
        cpu1, kin1 = tree_cpu_seconds(process.pid)
        procs.watch(process, kin1)
        wall1 = time.monotonic()
        broker_cpu1 = cpu_seconds(broker.pid)
        sub_cpu1 = sum(s.cpu() for s in subscriber)
        wait_settled(lambda: sum(s.count for s in subscriber))
        broker_busy = wait_idle(broker.pid)
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
                and broker_received1 - broker_received0 != int(result.get("sent", published))
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
    # `published`: in the kernel by the stop (msg/s); `sent`: all that went out, drain included,
    # which is what the subscribers and the broker can count.
    sent = int(result.get("sent", published))
    window = wall1 - wall0
    target = scenario["rate"] * len(clients) * scenario["seconds"]
    row: dict[str, Any] = {
        "peer": peer,
        "connected": ready.get("connected"),
        "connect_failed": ready.get("failed"),
        "published": published,
        "sent": sent,
        "acked": result.get("acked"),
        "received": received,
        "received_ratio": round(received / sent, 5) if sent else None,
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
        # Its own process's CPU from GO to the stop only (drain left out), where it says: a
        # publisher that keeps working long after the stop is charged for it above, not here.
        "msg_per_cpu_s_by_stop": (
            round(published / by_stop, 1) if (by_stop := result.get("cpu_at_stop")) else None
        ),
        "publisher_cpu_pct": round(100 * cpu / window, 1) if window else None,
        "broker_cpu_pct": round(100 * (broker_cpu1 - broker_cpu0) / window, 1),
        "subscriber_cpu_pct": round(100 * (sub_cpu1 - sub_cpu0) / window, 1),
        "drain_seconds": round(float(result.get("drain_seconds", 0.0)), 3),
        "broker_busy_after_s": round(broker_busy, 1),
    }
    # Paced: the schedule to keep. Flat out: what was offered, which nobody should reach.
    row["target"] = round(target)
    row["achieved_over_target"] = round(published / target, 5) if target else None
    if scenario["paced"]:
        row["lag_ms"] = result.get("lag_ms")
    for key in ("ack_ms", "extra"):
        if key in result:
            row[key] = result[key]
    return row


def stop_figures(rows: list[dict[str, Any]]) -> list[float]:
    return [r["msg_per_cpu_s_by_stop"] for r in rows if r.get("msg_per_cpu_s_by_stop")]


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
            "msg_per_cpu_s_by_stop": (
                round(statistics.median(by_stop), 1) if (by_stop := stop_figures(mine)) else None
            ),
            "received_ratio_min": min(r["received_ratio"] for r in mine),
            "publisher_cpu_pct": round(statistics.median(r["publisher_cpu_pct"] for r in mine), 1),
            "broker_cpu_pct": round(statistics.median(r["broker_cpu_pct"] for r in mine), 1),
            "subscriber_cpu_pct": round(
                statistics.median(r["subscriber_cpu_pct"] for r in mine), 1
            ),
        }
        summary[peer]["achieved_over_target"] = min(r["achieved_over_target"] for r in mine)
        if any("lag_ms" in r for r in mine):  # paced
            summary[peer]["lag_p99_ms_max"] = max(
                (r.get("lag_ms") or {}).get("p99", float("nan")) for r in mine
            )
        else:  # flat out: a peer near the offered rate was held by it, not by itself
            bound = max(r["achieved_over_target"] for r in mine) >= SCHEDULE_BOUND
            summary[peer]["schedule_bound"] = bound
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
        default=100_000.0,
        help="flat out: every peer's open-loop schedule, msg/s per client, meant to be above "
        "every peer's reach (a peer within 5%% of it is flagged schedule_bound: raise it)",
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
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="git revision: also run its elf_async (peer elf_async@base), alternating",
    )
    parser.add_argument(
        "--mqtt5",
        action="store_true",
        help="add elf_async:mqtt5 and elf_async:mqtt5props (send --mqtt 5) next to elf_async",
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
    if args.baseline:
        at = peers.index("elf_async") + 1 if "elf_async" in peers else len(peers)
        peers = [*peers[:at], "elf_async" + BASELINE, *peers[at:]]
    if args.mqtt5:
        peers = with_mqtt5(peers)
    if "mqttjs" in peers:
        ensure_mqttjs()
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
        "baseline": args.baseline,
        "scenarios": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="elf-bench-") as tmp:
            workdir = Path(tmp)
            base = baseline_tree(args.baseline, workdir / "baseline") if args.baseline else None
            broker = Mosquitto.start(directory=workdir / "broker", ca=pki.ca, listeners=True)
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
                    "paced": args.paced,
                    "rate": args.rate if args.paced else args.flat_out_rate,
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
                                base,
                            )
                        except (TimeoutError, RuntimeError) as exc:
                            row = {"peer": peer, "error": str(exc)}
                        row["round"] = round_no + 1
                        print(f"  {json.dumps(row)}", file=sys.stderr)
                        rows.append(row)
                for sub in subscriber:
                    procs.stop(sub.process)
                ok_rows = [r for r in rows if "error" not in r]
                focus = [p for p in peers if p.startswith(("elf_async", "aiomqtt_fast"))]
                summary = summarize(ok_rows, peers, focus)
                for peer, figures in summary["per_peer"].items():
                    if figures.get("schedule_bound"):
                        print(
                            f"warning: qos {qos}: {peer} reached the offered rate: raise "
                            "--flat-out-rate, or its figures are the schedule's, not its own",
                            file=sys.stderr,
                        )
                report["scenarios"].append(
                    {
                        "name": ("paced" if args.paced else "flat_out") + f"_qos{qos}",
                        **scenario,
                        "runs": rows,
                        "summary": summary,
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
