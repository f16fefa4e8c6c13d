"""One fleet and one schedule sent as 1, 2 and 4 shards on this machine: merge correctness, the
shards' CPU against one process, and the start skew between shards (issue 13's benchmark).

Against the local stack (`elf-async local up` in a temp state dir), each configuration creates
the same fleet (THINGS things, a fresh fleet id) and sends the same open-loop schedule (RATE
msg/s per thing for SECONDS s at QOS) from one instant T (`send --start-at T`, so every process
connects first and its connect phase is outside what is measured):

- 1 shard: one plain process (`create`, then `send`), in its own state dir;
- N shards: `create --shard I/N --fleet-id F` in N state dirs inside the stack's, then N
  `send --start-at T --report` processes at once, then `report merge` (1 shard: merged too).

Measured per configuration, all in one invocation (the 2-core machine is shared and noisy, so
only same-run ratios mean much):

- merge: the merged scheduled/published/acked against the single-process plan's total
  (`elf_async.dataplane.schedule.plan`) and the sum of the shards' reports; the merged `ack`
  HDR histogram's count against `acked`; `shards {count, merged, missing}`; what an
  independent `mosquitto_sub` (C, not our code) received.
- CPU: user+system of each `send` process from T-0.1 s (read from /proc) to its exit (its
  rusage from `os.wait4`): the send phase only (schedule, drain, report), summed over shards,
  as a ratio to the single process's.
- start skew: the witness subscriber stamps every message's arrival (`%U`, ns) and parses its
  payload (`thing`, `seq`, `ts`: the sender's clock at framing, ms). A shard's start offset is
  the arrival of the first of its messages to arrive, minus that message's due time
  (T + its thing's phase in the whole fleet's plan + seq/rate); the sender's `ts` gives the
  same offset on the sending side (1 ms resolution). Skew = the pairwise differences of the
  shards' offsets (over `--rounds`); its p99 and max are checked against the goal (5 ms).

`--dask` adds `run --cluster local:N --shards N` rows (create, send and clean on a Dask
LocalCluster): merge correctness and skew as above (T, which the driver picks, is inferred from
the witness: see `dask_run`); their CPU is not measured (it includes create and clean).

    python benchmarks/scaleout.py --out benchmarks/results/session-4/scaleout.json
    python benchmarks/scaleout.py --things 40 --seconds 5 --shards 1 2   # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    ROOT,
    Processes,
    cpu_seconds,
    machine,
    raise_fd_limit,
    wait_settled,
)
from elf_async.controlplane.certs import CertificateAuthority, generate_key, key_pem
from elf_async.dataplane.schedule import phase_of, plan
from elf_async.files import write_private, write_public
from elf_async.metrics import Histogram

GOAL_SKEW_MS = 5.0
FAKE_AWS = {  # the local stack's moto takes any credentials; none of the user's are read
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-west-2",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


class Cli:
    """`python -m elf_async --state-dir DIR ...` with the stack's environment."""

    def __init__(self, procs: Processes, stack_dir: Path) -> None:
        self.procs = procs
        self.stack_dir = stack_dir
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ELF_", "AWS_"))}
        self.env = {**base, **FAKE_AWS, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}

    def argv(self, state: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "elf_async", "--state-dir", str(state), *args]

    def spawn(self, state: Path, *args: str) -> subprocess.Popen[bytes]:
        return self.procs.spawn(
            self.argv(state, *args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def run(self, state: Path, *args: str, check: bool = True) -> int:
        result = subprocess.run(self.argv(state, *args), env=self.env, capture_output=True)
        if check and result.returncode != 0:
            raise SystemExit(
                f"scaleout.py: {' '.join(args[:2])} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()[-400:]}"
            )
        return result.returncode

    def all(self, jobs: list[tuple[Path, list[str]]]) -> None:
        """Run these at once; every one must exit 0."""
        running = [(self.spawn(state, *args), args) for state, args in jobs]
        for process, args in running:
            _out, err = process.communicate()
            self.procs.stop(process)
            if process.returncode != 0:
                raise SystemExit(
                    f"scaleout.py: {' '.join(args[:2])} exited {process.returncode}: "
                    f"{err.decode(errors='replace').strip()[-400:]}"
                )


class Witness:
    """mosquitto_sub on elf/#: each message's arrival time (ns), topic and payload fields."""

    def __init__(self, procs: Processes, local: Path, port: int) -> None:
        ca = CertificateAuthority.load(local / "ca.crt", local / "ca.key")
        key = generate_key("ec")
        key_file, cert_file = local / "witness.key", local / "witness.crt"
        write_private(key_file, key_pem(key))
        write_public(cert_file, ca.sign(key.public_key(), "scaleout-witness"))
        argv = [
            "mosquitto_sub",
            "-h", "127.0.0.1",
            "-p", str(port),
            "--cafile", str(local / "ca.crt"),
            "--cert", str(cert_file),
            "--key", str(key_file),
            "-i", "scaleout-witness",
            "-t", "elf/#",
            "-q", "1",
            "-F", "%U %t %p",
        ]  # fmt: skip
        self.process = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()
        self.count = 0
        self.first: dict[str, tuple[float, int, int]] = {}  # topic -> arrival, seq, ts (ms)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            stamp, _, rest = line.decode(errors="replace").partition(" ")
            topic, _, payload = rest.rstrip("\n").partition(" ")
            try:
                document = json.loads(payload)
                arrival = float(stamp)
            except ValueError:
                continue
            with self.lock:
                self.count += 1
                seen = self.first.get(topic)
                if seen is None or document["seq"] < seen[1]:
                    self.first[topic] = (arrival, int(document["seq"]), int(document["ts"]))

    def reset(self) -> None:
        with self.lock:
            self.count = 0
            self.first = {}

    def snapshot(self) -> tuple[int, dict[str, tuple[float, int, int]]]:
        with self.lock:
            return self.count, dict(self.first)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def thing_index(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def start_offsets(
    report: dict[str, Any],
    first: dict[str, tuple[float, int, int]],
    start_at: float,
    things: int,
    rate: float,
) -> dict[str, Any]:
    """One shard's start, seen by the witness: each of its things' first message (arrival and
    sender `ts`) minus its due time; the shard's offset is that of its first message to arrive."""
    arrivals: list[tuple[float, float, str]] = []  # arrival, due, topic
    by_ts: list[float] = []
    missing = 0
    for row in report["things"]:
        seen = first.get(row["topic"])
        if seen is None:
            missing += 1
            continue
        arrival, seq, ts_ms = seen
        due = start_at + phase_of(thing_index(row["name"]), things, rate) + seq / rate
        arrivals.append((arrival, due, row["topic"]))
        by_ts.append(ts_ms / 1000 - due)
    if not arrivals:
        return {"things_seen": 0, "things_missing": missing}
    arrival, due, topic = min(arrivals)
    lateness = [(a - d) * 1000 for a, d, _ in arrivals]
    first_ts = first[topic][2] / 1000 - due
    return {
        "things_seen": len(arrivals),
        "things_missing": missing,
        "first_topic": topic,
        "first_offset_ms": round((arrival - due) * 1000, 3),  # arrival at the witness - due
        "first_offset_sender_ms": round(first_ts * 1000, 3),  # sender's ts - due (1 ms steps)
        "first_message_lateness_ms": {  # every thing's first message: arrival - due
            "min": round(min(lateness), 3),
            "p50": round(statistics.median(lateness), 3),
            "max": round(max(lateness), 3),
        },
        "min_sender_offset_ms": round(min(by_ts) * 1000, 3),
    }


def merge_checks(
    merged: dict[str, Any], shards: list[dict[str, Any]], expected: int, qos: int, received: int
) -> dict[str, Any]:
    messages = merged["messages"]
    summed = {k: sum(s["messages"][k] for s in shards) for k in ("scheduled", "published", "acked")}
    ack_count = Histogram.decode(merged["histograms"]["ack"].encode()).count
    checks = {
        "plan_total": expected,
        "merged": {k: messages[k] for k in ("scheduled", "published", "acked", "failed", "unsent")},
        "sum_of_shards": summed,
        "merged_ack_histogram_count": ack_count,
        "shards": merged.get("shards"),
        "witness_received": received,
        "scheduled_eq_plan": messages["scheduled"] == expected,
        "published_eq_plan": messages["published"] == expected,
        "acked_eq_plan": messages["acked"] == expected if qos else None,
        "merged_eq_sum": all(messages[k] == v for k, v in summed.items()),
        "ack_histogram_eq_acked": ack_count == messages["acked"],
        "witness_eq_published": received == messages["published"],
    }
    checks["ok"] = all(v is not False for k, v in checks.items() if k.endswith(("_plan", "_sum")))
    checks["ok"] = bool(checks["ok"] and checks["ack_histogram_eq_acked"])
    return checks


def lag_summary(report: dict[str, Any]) -> dict[str, Any]:
    lag = report["latency_ms"]["lag"]
    return {k: lag.get(k) for k in ("p50", "p99", "max")}


def sharded_run(
    cli: Cli, witness: Witness, work: Path, shards: int, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    """Create the fleet as `shards` shards (one plain process for 1), send from one T, merge."""
    fleet = secrets.token_hex(4)
    states = [work / f"{label}-shard-{i}" for i in range(shards)]
    sharding = (lambda i: ["--shard", f"{i}/{shards}"]) if shards > 1 else (lambda i: [])
    creates = [
        (state, ["-q", "--local", "create", str(args.things), "--fleet-id", fleet, *sharding(i)])
        for i, state in enumerate(states)
    ]
    print(f"[{label}] creating {args.things} things as {shards} shard(s)", file=sys.stderr)
    cli.all(creates)
    witness.reset()
    # Connecting takes about things/connect-rate (100/s, split N ways: the same for the fleet).
    start_at = math.ceil(time.time() + args.lead + args.things / 100)
    reports = [work / f"{label}-r{i}.json" for i in range(shards)]
    send = ["--rate", f"{args.rate}/s", "--duration", f"{args.seconds}s", "--qos", str(args.qos)]
    print(f"[{label}] sending from T={start_at}", file=sys.stderr)
    processes = [
        cli.spawn(
            state,
            "-q",
            "--local",
            "send",
            *send,
            "--start-at",
            str(start_at),
            "--report",
            str(report),
        )
        for state, report in zip(states, reports, strict=True)
    ]
    time.sleep(max(0.0, start_at - 0.1 - time.time()))
    at_start = [cpu_seconds(p.pid) for p in processes]
    if any(p.poll() is not None for p in processes):
        raise SystemExit(f"scaleout.py: [{label}] a send exited before T")
    t0 = time.monotonic()
    cpus, codes = [], []
    for process, before in zip(processes, at_start, strict=True):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        codes.append(process.returncode)
        cpus.append(usage.ru_utime + usage.ru_stime - before)
        self_stderr = process.stderr.read() if process.stderr is not None else b""
        if process.returncode != 0:
            print(
                f"[{label}] send exited {process.returncode}: {self_stderr[-400:]!r}",
                file=sys.stderr,
            )
        cli.procs.stop(process)
    wall = time.monotonic() - t0
    merged_file = work / f"{label}-merged.json"
    merge_code = cli.run(
        states[0], "report", "merge", *map(str, reports), "-o", str(merged_file), check=False
    )
    wait_settled(lambda: witness.snapshot()[0])
    received, first = witness.snapshot()
    shard_reports = [json.loads(r.read_text()) for r in reports]
    merged = json.loads(merged_file.read_text())
    print(f"[{label}] cleaning", file=sys.stderr)
    cli.all([(state, ["-q", "--local", "clean", "--yes"]) for state in states])
    expected = sum(s.total for s in plan(args.things, args.rate, duration=args.seconds))
    starts = [start_offsets(r, first, start_at, args.things, args.rate) for r in shard_reports]
    published = merged["messages"]["published"]
    return {
        "label": label,
        "engine": "processes",
        "shards": shards,
        "fleet_id": fleet,
        "start_at": start_at,
        "send_exit_codes": codes,
        "merge_exit_code": merge_code,
        "wall_s_from_t": round(wall, 3),
        "merge": merge_checks(merged, shard_reports, expected, args.qos, received),
        "cpu": {
            "per_shard_s": [round(c, 3) for c in cpus],
            "total_s": round(sum(cpus), 3),
            "msg_per_cpu_s": round(published / sum(cpus), 1) if sum(cpus) else None,
        },
        "late_start_s": [r.get("start", {}).get("late_start_s") for r in shard_reports],
        "lag_ms_per_shard": [lag_summary(r) for r in shard_reports],
        "start": starts,
    }


def dask_run(
    cli: Cli, witness: Witness, work: Path, shards: int, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    """`run --cluster local:N --shards N`: create, send and clean on a Dask LocalCluster.

    The driver picks T (a whole second) and the merged report does not record it: T is taken
    as the whole second at or before the earliest (arrival - phase - seq/rate) the witness saw,
    which holds while every shard starts less than a second late (never early: the schedule is
    open loop)."""
    state = work / label
    report = work / f"{label}-merged.json"
    witness.reset()
    print(f"[{label}] run --cluster local:{shards}", file=sys.stderr)
    t0 = time.monotonic()
    code = cli.run(
        state, "-q", "--local", "run", str(args.things), "--cluster", f"local:{shards}",
        "--shards", str(shards), "--rate", f"{args.rate}/s", "--duration", f"{args.seconds}s",
        "--qos", str(args.qos), "--report", str(report), check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    row: dict[str, Any] = {"label": label, "engine": "dask", "shards": shards, "exit_code": code}
    if not report.exists():
        return {**row, "error": "no merged report"}
    wait_settled(lambda: witness.snapshot()[0])
    received, first = witness.snapshot()
    merged = json.loads(report.read_text())
    expected = sum(s.total for s in plan(args.things, args.rate, duration=args.seconds))
    rows = merged["things"]
    origins = [
        first[r["topic"]][0]
        - phase_of(thing_index(r["name"]), args.things, args.rate)
        - first[r["topic"]][1] / args.rate
        for r in rows
        if r["topic"] in first
    ]
    start_at = math.floor(min(origins)) if origins else None
    slices = [
        {"things": [r for r in rows if i * args.things // shards <= thing_index(r["name"])
                    < (i + 1) * args.things // shards]}
        for i in range(shards)
    ]  # fmt: skip
    return {
        **row,
        "wall_s_whole_run": round(wall, 3),
        "merge": merge_checks(merged, [merged], expected, args.qos, received),
        "cpu": None,  # the LocalCluster's processes also create and clean: not comparable
        "start_at_inferred": start_at,
        "start": []
        if start_at is None
        else [start_offsets(s, first, start_at, args.things, args.rate) for s in slices],
    }


def skew(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Pairwise differences of the shards' start offsets, over every round of this config."""
    pairs: list[float] = []
    spreads: list[float] = []
    for row in rows:
        offsets = [s[key] for s in row.get("start") or [] if key in s]
        if len(offsets) < 2:
            continue
        spreads.append(max(offsets) - min(offsets))
        pairs += [abs(a - b) for i, a in enumerate(offsets) for b in offsets[i + 1 :]]
    p99 = percentile(pairs, 99)
    return {
        "pairs": len(pairs),
        "p99_ms": None if p99 is None else round(p99, 3),
        "max_ms": round(max(pairs), 3) if pairs else None,
        "spread_per_round_ms": [round(s, 3) for s in spreads],
        "goal_ms": GOAL_SKEW_MS,
        "goal_met": None if p99 is None else p99 <= GOAL_SKEW_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="msg/s per thing")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=1, help="each config this often, ABAB")
    parser.add_argument("--lead", type=float, default=4.0, help="s between the sends and T")
    parser.add_argument("--dask", action="store_true", help="add run --cluster local:N rows")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if 1 not in args.shards:
        parser.error("--shards must include 1 (the single process is the baseline)")
    raise_fd_limit()
    command = " ".join(["python", "benchmarks/scaleout.py", *sys.argv[1:]])
    document: dict[str, Any] = {
        "benchmark": "scaleout",
        "command": command,
        "machine": machine(),
        "things": args.things,
        "rate_per_thing": args.rate,
        "seconds": args.seconds,
        "qos": args.qos,
        "rounds": args.rounds,
    }
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="elf-scaleout-") as tmp:
        work = Path(tmp)
        stack_dir = work / "elf"
        cli = Cli(procs, stack_dir)
        try:
            cli.run(stack_dir, "-q", "local", "up")
            local = stack_dir / "local"
            stack = json.loads((local / "stack.json").read_text())
            witness = Witness(procs, local, stack["mosquitto"]["port"])
            time.sleep(1.0)  # subscribed before the first send
            runs: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for n in args.shards:
                    runs.append(sharded_run(cli, witness, stack_dir, n, args, f"r{round_}-n{n}"))
                if args.dask:
                    for n in (n for n in args.shards if n > 1):
                        runs.append(
                            dask_run(cli, witness, stack_dir, n, args, f"r{round_}-dask{n}")
                        )
        finally:
            cli.run(stack_dir, "-q", "local", "down", check=False)
            procs.close()
    document["runs"] = runs
    summary: dict[str, Any] = {}
    for engine in ("processes", "dask"):
        for n in args.shards:
            rows = [r for r in runs if r["engine"] == engine and r["shards"] == n]
            if not rows:
                continue
            singles = [r for r in runs if r["engine"] == "processes" and r["shards"] == 1]
            ratios = [
                r["cpu"]["total_s"] / s["cpu"]["total_s"]
                for r, s in zip(rows, singles, strict=False)
                if r["cpu"] and s["cpu"]["total_s"]
            ]
            summary[f"{engine}-{n}"] = {
                "merge_ok": all(r.get("merge", {}).get("ok", False) for r in rows),
                "cpu_ratio_vs_single": [round(x, 3) for x in ratios],
                "skew_witness": skew(rows, "first_offset_ms"),
                "skew_sender_ts": skew(rows, "first_offset_sender_ms"),
                "first_offset_ms": [[s.get("first_offset_ms") for s in r.get("start") or []]
                                    for r in rows],
            }  # fmt: skip
    document["summary"] = summary
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
