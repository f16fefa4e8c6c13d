"""Fixtures for the embedded local stack: the CLI against a state dir, and a process watcher.

Teardown never trusts the code under test: it finds leftover processes by what they hold
open under the test's directory (/proc) and kills them by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.fixtures import FAKE_AWS_ENV
from support.wait import wait_until


def processes_under(directory: Path) -> set[int]:
    """PIDs whose command line or open files point into `directory` (Linux /proc)."""
    root = str(directory.resolve())
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if (proc / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            held = [(proc / "cmdline").read_bytes().decode(errors="replace")]
            held += [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            if any(root in item for item in held):
                found.add(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def children(pid: int) -> set[int]:
    """The direct children of `pid` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


@contextlib.contextmanager
def reaping(process: subprocess.Popen[Any]) -> Iterator[set[int]]:
    """A set for the worker PIDs the test finds: on the way out, even when the test fails,
    the CLI process and every one of those workers still alive are killed."""
    workers: set[int] = set()
    try:
        yield workers
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@dataclass
class LocalCli:
    """`python -m elf_async --state-dir DIR ...` as a user runs it, with no AWS anywhere."""

    state_dir: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ELF_", "AWS_"))}
        return {**base, **FAKE_AWS_ENV, "NO_COLOR": "1", **(extra or {})}

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "elf_async", "--state-dir", str(self.state_dir), *args]

    def __call__(
        self, *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            cwd=self.state_dir.parent,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            cwd=self.state_dir.parent,
        )

    def on_terminal(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        """Run with a pseudo-terminal (120 columns) as stdin, stdout and stderr, as a user at a
        terminal does: the exit code and everything written, escape sequences removed."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        process = subprocess.Popen(
            self.args(*args),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=self.env({"TERM": "xterm"}),
            cwd=self.state_dir.parent,
        )
        os.close(slave)
        written = bytearray()
        try:
            while True:
                ready, _, _ = select.select([master], [], [], timeout)
                if not ready:
                    raise TimeoutError(f"nothing written for {timeout}s: {bytes(written)!r}")
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                written += chunk
        finally:
            os.close(master)
            if process.poll() is None:
                process.kill()
            process.wait()
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", written.decode(errors="replace"))
        return process.returncode, text.replace("\r", "")

    def stack(self) -> dict[str, Any] | None:
        """The stack record as written by `local up`, or None."""
        path = self.state_dir / "local" / "stack.json"
        return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture
def local_cli(tmp_path: Path) -> Iterator[LocalCli]:
    """A state dir for local-stack tests; whatever still runs from it is killed afterwards."""
    cli = LocalCli(tmp_path / "state")
    cli.state_dir.mkdir()
    yield cli
    leftovers = processes_under(tmp_path)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not any(alive(pid) for pid in leftovers),
        what=f"the killed leftovers {sorted(leftovers)} to exit",
        timeout=10,
    )


@pytest.fixture
def stack(local_cli: LocalCli) -> Iterator[dict[str, Any]]:
    """A stack started with `local up`, so that moto can be inspected after the run."""
    up = local_cli("local", "up")
    assert up.returncode == 0, up.stderr
    record = local_cli.stack()
    assert record is not None
    yield record
    assert local_cli("local", "down").returncode == 0
    assert not alive(record["moto"]["pid"])
    assert not alive(record["mosquitto"]["pid"])


def finished(
    processes: list[subprocess.Popen[str]], *, timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """Processes started together, once each has exited: their codes and output."""
    results = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results
