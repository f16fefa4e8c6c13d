"""One command at a time changes a state dir: a lock per state dir, ``<state-dir>/lock``.

The ledger, the keys and the local stack's record only agree with each other and with AWS if
one command at a time changes them: two `create` runs on one state dir once recorded one fleet
while the things belonged to another. So `create`, `clean`, `run` and `local up`/`down` hold
the lock exclusively for their whole run; `send` and `subscribe` hold it shared while they read
the fleet (and cache its endpoint), so they never read a fleet that another command is
changing, and never keep each other out. `status` reads without it.

The lock is the kernel's (flock): it goes when its holder exits, however it exits, so it is
never stale. A command that finds it taken does not wait (a `create` can take minutes): it
refuses with one line naming the holder, whose PID and command line the holder writes into
the lock file. Within one process the lock is re-entrant: `run --local` holds it and starts
the local stack, whose `up` takes it too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from elf_async.errors import StateDirBusy, UsageError
from elf_async.files import make_private_dirs

LOCK_FILE = "lock"
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_held: dict[Path, bool] = {}  # state dirs this process holds -> held shared


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_FILE


@contextlib.contextmanager
def hold(state_dir: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the state dir's lock (exclusive, or `shared` with other readers) for the block.

    Raises `StateDirBusy` naming the holder when another process holds it in a conflicting
    way. An exclusive holder makes the state dir (0700) if it does not exist yet; a reader of
    a state dir that does not exist has nothing to lock.
    """
    key = state_dir.resolve()
    if key in _held:  # this process holds it already: ride on the outer hold
        assert shared or not _held[key], "an exclusive hold inside a shared one"
        yield
        return
    if shared and not state_dir.is_dir():
        yield
        return
    fd, writable = _open(state_dir)
    if fd is None:  # no lock file, and none can be made: nobody else can hold it either
        yield
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirBusy(_busy(state_dir, fd, shared=shared)) from None
        record = f"{os.getpid()}\t{_command_line()}\n".encode()
        if writable:  # written before it is cut to length: never empty while we hold it
            os.pwrite(fd, record, 0)
            os.ftruncate(fd, len(record))
        _held[key] = shared
        try:
            yield
        finally:
            del _held[key]
            if writable and os.pread(fd, len(record) + 1, 0) == record:
                os.ftruncate(fd, 0)  # unless a reader next to us wrote over it
    finally:
        os.close(fd)  # releases the lock


def _open(state_dir: Path) -> tuple[int | None, bool]:
    """The lock file and whether it is open for writing. A lock needs only a read, so a state
    dir that cannot be written can still be locked (`local down` must stop its stack); where
    the lock file cannot even be made, None: then nobody can hold it."""
    path = lock_path(state_dir)
    try:
        make_private_dirs(state_dir)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), True
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise UsageError(f"cannot use the state dir {state_dir}: {exc.strerror}") from exc
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    except FileNotFoundError:
        return None, False


def _busy(state_dir: Path, fd: int, *, shared: bool) -> str:
    holder = "another elf-async command"
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = os.pread(fd, 4096, 0).decode().splitlines()[0]
        pid_text, _, command = first.partition("\t")
        pid = int(pid_text)
        if _alive(pid):
            holder = f"`{command}` (PID {pid})"
    what = "read" if shared else "changed"
    return (
        f"the state dir {state_dir} is in use by {holder}; it cannot be {what} until that "
        "command ends: wait for it, or use another --state-dir"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line() -> str:
    return shlex.join(["elf-async", *sys.argv[1:]])
