"""Is this PID still ours? Real processes: one whose PID now names another process, one that
turns into another program between SIGTERM and SIGKILL, one that ignores SIGTERM."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from elf_async.local import processes
from elf_async.local.mosquitto import Mosquitto
from elf_async.local.processes import Owned, is_ours, own

# `sh -c SCRIPT NAME`: NAME is $0, so it is in the command line (here: "fake-mosquitto").
EXEC_CAT_ON_TERM = 'trap "exec cat" TERM; echo ready; while :; do sleep 0.05; done'
IGNORE_TERM = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    """Started processes, killed and reaped at the end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def _start(started: list[subprocess.Popen[str]], *argv: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    started.append(process)
    return process


def _answers(process: subprocess.Popen[str]) -> bool:
    """A line echoed through `cat`: it was alive, and no signal sent before ended it."""
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write("still here\n")
    process.stdin.flush()
    return process.stdout.readline() == "still here\n"


def _ready(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"  # the trap is set


def test_a_recycled_pid_is_not_ours_and_stop_sends_it_nothing(
    spawn: list[subprocess.Popen[str]],
) -> None:
    first = _start(spawn, "cat")
    recorded = own(first.pid, "cat")
    assert recorded is not None
    assert is_ours(recorded)
    first.kill()
    first.wait()
    assert not is_ours(recorded)

    second = _start(spawn, "cat")
    while processes.start_time(second.pid) == recorded.started:  # the same clock tick (10 ms)
        second.kill()
        second = _start(spawn, "cat")
    # The kernel handing our PID to another process: same PID, another start time.
    recycled = Owned(second.pid, recorded.started, "cat")
    assert not is_ours(recycled)
    assert processes.stop(recycled, timeout=10)
    assert _answers(second)
    assert is_ours(Owned(second.pid, processes.start_time(second.pid) or "", "cat"))


def test_an_attached_mosquitto_that_became_another_program_is_not_killed(
    spawn: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    """Same PID and start time, but on SIGTERM it exec'd another program: the SIGKILL that
    follows an unanswered SIGTERM must not reach it."""
    process = _start(spawn, "sh", "-c", EXEC_CAT_ON_TERM, "fake-mosquitto")
    _ready(process)
    recorded = own(process.pid, "mosquitto")
    assert recorded is not None
    attached = Mosquitto.attach(process=recorded, port=1, directory=tmp_path)
    assert attached.alive()
    attached.stop(timeout=10)
    assert not attached.alive()
    assert _answers(process)  # now `cat`: it got the SIGTERM, and no SIGKILL


def test_a_process_that_ignores_sigterm_is_killed(spawn: list[subprocess.Popen[str]]) -> None:
    process = _start(spawn, "sh", "-c", IGNORE_TERM, "stubborn")
    _ready(process)
    recorded = own(process.pid, "stubborn")
    assert recorded is not None
    assert processes.stop(recorded, timeout=0.5)
    assert processes.start_time(process.pid) is None  # it ignores SIGTERM: SIGKILL did it


def test_without_proc_ps_tells_the_start_time_and_command_line(
    spawn: list[subprocess.Popen[str]],
) -> None:
    """The macOS path, run here against the same process."""
    process = _start(spawn, "cat")
    probed = processes.probe_with_ps(process.pid)
    assert probed is not None
    started, cmdline = probed
    assert started.startswith("lstart:")
    assert len(started) == len("lstart:") + 24
    assert cmdline.split(b"\0")[0].endswith(b"cat")
    process.kill()
    process.wait()
    assert processes.probe_with_ps(process.pid) is None


def test_listener_names_the_process_that_holds_a_port(spawn: list[subprocess.Popen[str]]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: nobody holds it as a server
        assert processes.listener(unused.getsockname()[1]) is None
    holder = _start(
        spawn, sys.executable, "-c",
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
        "print(s.getsockname()[1], flush=True); input()",
    )  # fmt: skip
    assert holder.stdout is not None
    port = int(holder.stdout.readline())
    comm = Path(f"/proc/{holder.pid}/comm").read_text().strip()
    assert processes.listener(port) == (holder.pid, comm)
