"""Is this PID still ours? The one place that knows a process again, and stops only that one.

A PID alone names no process for long: once ours exits, the kernel may hand its number to
any other. So what we start is recorded as `Owned`: its PID, its start time (which a recycled
PID does not share) and a word its command line holds. `is_ours` checks all of them, and
`stop` checks again right before every signal, the SIGKILL after a SIGTERM included: a process
that went away (or turned into something else) meanwhile is never signalled.

`listener` names the process that holds a port, for a refusal a user can act on.

Linux reads /proc; elsewhere (macOS) `ps` tells the start time and the command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.05  # how often `stop` looks whether the process is gone


@dataclass(frozen=True, slots=True)
class Owned:
    """A process we started, as recorded right after: enough to know it again."""

    pid: int
    started: str  # its start time, as `start_time` gives it
    command: str = ""  # a word its command line holds (e.g. "mosquitto"); "" checks none


def start_time(pid: int) -> str | None:
    """The start time of process `pid` (None when none runs; a zombie counts as gone)."""
    probed = _probe(pid)
    return None if probed is None else probed[0]


def own(pid: int, command: str = "") -> Owned | None:
    """The record of process `pid`, which we have just started; None if it is gone already."""
    started = start_time(pid)
    return None if started is None else Owned(pid, started, command)


def is_ours(process: Owned) -> bool:
    """Whether `process` still runs: same PID, same start time, and its command line holds
    `command` (an exiting process's is empty: still ours). Reaps it first if it is our child
    and has exited, so that a zombie counts as gone."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)
    probed = _probe(process.pid)
    if probed is None or probed[0] != process.started:
        return False
    cmdline = probed[1]
    return not process.command or not cmdline or process.command.encode() in cmdline


def stop(process: Owned, timeout: float) -> bool:
    """SIGTERM, then SIGKILL if it still runs `timeout` seconds later, each sent only while
    `process` is still ours. Returns whether it is gone (or no longer ours) at the end."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(process):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        deadline = time.monotonic() + timeout
        while is_ours(process):
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        else:
            return True
    return False


def listener(port: int) -> tuple[int, str] | None:
    """The PID and name of a process listening on TCP `port`, to say who holds a port the stack
    needs; None when none is found (not Linux, or a process whose descriptors we may not read)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl, local address:port (hex), remote, state, ..., inode
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    for descriptors in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in sockets for fd in descriptors.iterdir()):
                pid = int(descriptors.parent.name)
                return pid, Path(f"/proc/{pid}/comm").read_text().strip()
    return None


def _probe(pid: int) -> tuple[str, bytes] | None:
    """(start time, command line with NUL-separated arguments) of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
        return probe_with_ps(pid)
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    return f"ticks:{fields[19]}", cmdline


def probe_with_ps(pid: int) -> tuple[str, bytes] | None:
    """Without /proc (macOS): `ps` gives the state, the start time (`lstart`, 24 characters)
    and the command line."""
    result = subprocess.run(
        ["ps", "-o", "stat=,lstart=,command=", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=False,
    )
    state, _, rest = result.stdout.strip().partition(" ")
    if not state or state.startswith("Z"):
        return None
    rest = rest.strip()
    return f"lstart:{rest[:24]}", rest[24:].strip().replace(" ", "\0").encode()
