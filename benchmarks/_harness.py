"""Shared benchmark plumbing: cached test PKI, a mutual-TLS mosquitto, CPU clocks, cleanup.

Certificates are expensive (RSA-2048 keys take ~50 ms each) so they are generated once and
cached under the system temp dir; every process the harness starts is tracked by PID and
stopped in `Processes.close()` (called from `finally`, so Ctrl-C cleans up too).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from elf_async.controlplane.certs import (  # noqa: E402
    CertificateAuthority,
    KeyType,
    generate_key,
    key_pem,
)
from elf_async.files import write_private, write_public  # noqa: E402
from elf_async.local.mosquitto import Mosquitto  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "elf-async-bench-pki"
KEY_POOL = 500  # distinct keys; beyond that, certificates (one per client) share keys


@dataclass(frozen=True, slots=True)
class ClientFiles:
    id: str
    cert: str
    key: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "cert": self.cert, "key": self.key}


def _make_key(key_type: KeyType) -> str:
    return key_pem(generate_key(key_type))


class Pki:
    """A cached test CA and client certificates signed by it (one certificate per client)."""

    def __init__(self, cache: Path = DEFAULT_CACHE) -> None:
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = cache / "ca.crt", cache / "ca.key"
        if ca_cert.exists() and ca_key.exists():
            self.ca = CertificateAuthority.load(ca_cert, ca_key)
        else:
            self.ca = CertificateAuthority.create("elf-async bench CA")
            write_private(ca_key, key_pem(self.ca.key))
            write_public(ca_cert, self.ca.cert_pem)
        self.ca_file = ca_cert

    def clients(
        self, count: int, key_type: KeyType = "rsa", prefix: str = "bench"
    ) -> list[ClientFiles]:
        """`count` clients named `<prefix>-<i>`, each with its own certificate."""
        base = self.cache / key_type
        keys_dir, certs_dir = base / "keys", base / "certs"
        pool = min(count, KEY_POOL)
        missing = [j for j in range(pool) if not (keys_dir / f"k{j:04d}.pem").exists()]
        if missing:
            print(
                f"generating {len(missing)} {key_type} keys (cached in {keys_dir})", file=sys.stderr
            )
            with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool_ex:
                for j, pem in zip(
                    missing, pool_ex.map(_make_key, [key_type] * len(missing)), strict=True
                ):
                    write_private(keys_dir / f"k{j:04d}.pem", pem)
        out: list[ClientFiles] = []
        loaded: dict[int, Any] = {}
        for i in range(count):
            name = f"{prefix}-{i:05d}"
            key_file = keys_dir / f"k{i % pool:04d}.pem"
            cert_file = certs_dir / f"{name}.crt"
            if not cert_file.exists():
                j = i % pool
                if j not in loaded:
                    loaded[j] = serialization.load_pem_private_key(key_file.read_bytes(), None)
                write_public(cert_file, self.ca.sign(loaded[j].public_key(), name))
            out.append(ClientFiles(name, str(cert_file), str(key_file)))
        return out


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (children such as mosquitto inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a live process (all its threads), from /proc/PID/stat."""
    stat = _stat(pid)
    return float("nan") if stat is None else (stat[STAT_UTIME] + stat[STAT_STIME]) / CLOCK_TICKS


# Fields of /proc/PID/stat after the command name, as ints: field N of proc(5) is index N - 3;
# index 0 (the state letter) is 1 for a zombie (exited, not yet reaped), else 0.
STAT_ZOMBIE, STAT_PPID, STAT_UTIME, STAT_STIME, STAT_CUTIME, STAT_CSTIME, STAT_START = (
    0, 1, 11, 12, 13, 14, 19,
)  # fmt: skip


def _stat(pid: int) -> list[int] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return [int(fields[0] in ("Z", "X")), *(int(f) for f in fields[1:])]


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every descendant of `pid` (children, grandchildren, ..., zombies included): (pid,
    start time)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[STAT_PPID], []).append((int(entry.name), stat[STAT_START]))
    found: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def tree_cpu_seconds(pid: int) -> tuple[float, list[tuple[int, int]]]:
    """user+system CPU of a process and all its descendants, and those descendants.

    A process's CPU is in exactly one place at any time: in its own /proc/PID/stat (utime,
    stime: every thread, live or exited) while it runs or is a zombie, and in its parent's
    cutime/cstime once the parent has reaped it with wait() (the kernel adds the child's
    own and its reaped children's time there). So the tree's total is the process's
    utime+stime+cutime+cstime plus, for every descendant not yet reaped, its
    utime+stime+cutime+cstime. Differences of this total between two instants are exact for
    children that exit in between, provided their parent reaps them before the second
    reading: `send --workers` does (asyncio waits for each worker before the peer prints
    RESULT), so at GO the idle workers are counted from their own stat (their connect phase
    cancels out) and at RESULT from the peer's cutime/cstime. A child reaped while we read
    would be missed or counted twice: the reading is repeated until the process's
    cutime/cstime did not change across it.
    """
    total, kin = float("nan"), []
    for _ in range(5):
        first = _stat(pid)
        if first is None:
            return float("nan"), []
        kin = descendants(pid)
        ticks = 0
        for child, start in kin:
            stat = _stat(child)
            if stat is not None and stat[STAT_START] == start:
                ticks += sum(stat[STAT_UTIME : STAT_CSTIME + 1])
        last = _stat(pid)
        if last is None:
            return float("nan"), []
        total = (ticks + sum(last[STAT_UTIME : STAT_CSTIME + 1])) / CLOCK_TICKS
        if last[STAT_CUTIME : STAT_CSTIME + 1] == first[STAT_CUTIME : STAT_CSTIME + 1]:
            break
    return total, kin


def alive(pid: int, start: int) -> bool:
    """Whether process `pid` is still the one that started at `start` (and not a zombie)."""
    stat = _stat(pid)
    return stat is not None and stat[STAT_START] == start and not stat[STAT_ZOMBIE]


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


class Processes:
    """Every child the harness starts, and their descendants, stopped by PID (TERM, then KILL)
    at the end."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self.brokers: list[Mosquitto] = []
        self.kin: dict[int, set[tuple[int, int]]] = {}

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(argv), start_new_session=True, **kwargs)
        self.children.append(process)
        return process

    def watch(self, process: subprocess.Popen[bytes], kin: list[tuple[int, int]]) -> None:
        """Remember descendants of `process` (pid, start time) to stop with it."""
        self.kin.setdefault(process.pid, set()).update(kin)

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
        # Its descendants too (`send --workers` processes): those seen while it ran and those
        # alive now, each by PID, checked against its start time so a reused PID is left alone.
        kin = self.kin.pop(process.pid, set())
        if process.poll() is None:
            kin.update(descendants(process.pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ValueError):
            self.children.remove(process)
        for signum in (signal.SIGTERM, signal.SIGKILL):
            left = [(pid, start) for pid, start in kin if alive(pid, start)]
            for pid, _ in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + 5.0
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                left = [(pid, start) for pid, start in left if alive(pid, start)]

    def close(self) -> None:
        for process in list(self.children):
            self.stop(process)
        for broker in self.brokers:
            broker.stop()


class CountingSubscriber:
    """An independent subscriber: mosquitto_sub (C, not our code) printing one line per message.

    A thread counts newlines; several can share the load with a `$share/` subscription.
    """

    def __init__(
        self,
        procs: Processes,
        broker: Mosquitto,
        files: ClientFiles,
        ca_file: Path,
        topic: str,
        qos: int,
    ) -> None:
        argv = [
            "mosquitto_sub",
            "-h", broker.host,
            "-p", str(broker.port),
            "--cafile", str(ca_file),
            "--cert", files.cert,
            "--key", files.key,
            "-i", files.id,
            "-t", topic,
            "-q", str(qos),
            "-F", "%l",
        ]  # fmt: skip
        self.process = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            self.count += chunk.count(b"\n")

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


class BrokerCounter:
    """mosquitto's own count of PUBLISH packets received (``$SYS``, every ``sys_interval``).

    Checks the publisher's claim against the broker independently of how fast subscribers
    drain: a broker that accepts more than it can forward drops for slow subscribers.
    """

    TOPIC = "$SYS/broker/publish/messages/received"

    def __init__(self, procs: Processes, broker: Mosquitto, files: ClientFiles, ca_file: Path):
        argv = [
            "mosquitto_sub",
            "-h", broker.host,
            "-p", str(broker.port),
            "--cafile", str(ca_file),
            "--cert", files.cert,
            "--key", files.key,
            "-i", files.id,
            "-t", self.TOPIC,
            "-F", "%p",
        ]  # fmt: skip
        self.process = procs.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.value: int | None = None
        self.updated_at = 0.0
        self.quiet_since = 0.0  # no publisher has run since (monotonic)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.value = int(line.strip())
            except ValueError:
                continue
            self.updated_at = time.monotonic()

    def fresh(self, after: float, limit: float = 25.0) -> int | None:
        """The first value published after monotonic time `after` (None if none came)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.updated_at > after:
                return self.value
            time.sleep(0.1)
        return None


def settled_count(counter: BrokerCounter, after: float, limit: float = 35.0) -> int | None:
    """The broker's count once it stops moving: a broker that fell behind is still reading."""
    deadline = time.monotonic() + limit
    value = counter.fresh(after=after)
    while value is not None and time.monotonic() < deadline:
        seen = counter.updated_at
        following = counter.fresh(after=seen, limit=max(0.0, deadline - time.monotonic()))
        if following is None or following == value:
            return value
        value = following
    return value


def wait_idle(pid: int, busy_below: float = 0.05, limit: float = 300.0) -> float:
    """Wait until process `pid` uses less than `busy_below` of a core over a second (at most
    `limit` s); returns the seconds waited. A broker flooded at QoS 0 reads and forwards its
    backlog for a long time after the publisher stopped: the next run must not share it."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < limit:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if not now - last >= busy_below:  # NaN (gone) counts as idle
            break
        last = now
    return time.monotonic() - start


def wait_settled(counter: Any, quiet: float = 0.5, limit: float = 15.0) -> None:
    """Wait until `counter()` stops changing for `quiet` seconds (at most `limit`)."""
    deadline = time.monotonic() + limit
    last = counter()
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        value = counter()
        if value != last:
            last, last_change = value, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return


def baseline_tree(revision: str, directory: Path) -> Path:
    """The elf_async package of `revision`, extracted under `directory`, next to a link to this
    tree's benchmarks: a peer run there (``python -m`` puts its directory first on sys.path,
    and PYTHONPATH points there) imports the baseline's elf_async and the current peer code."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "elf_async"],
        check=True,
        capture_output=True,
    ).stdout
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    (directory / "benchmarks").symlink_to(ROOT / "benchmarks")
    return directory
