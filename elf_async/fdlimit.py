"""The open-file limit (RLIMIT_NOFILE): every MQTT connection is a file descriptor, and the
usual soft limit (1024) stops a fleet long before memory or CPU do.

`send`, `subscribe` and `run` raise their soft limit to the hard limit at start, and the local
stack's mosquitto is started with the same (`raise_to_hard` as its preexec). When even the hard
limit cannot hold the connections, the command says so before connecting (`check_connections`);
when the OS refuses later anyway (EMFILE, ENFILE), `refused` words the per-thing reason.
"""

from __future__ import annotations

import contextlib
import errno
import resource

from elf_async.errors import UsageError

# Descriptors a process needs besides its connections: epoll sets, pipes to its workers, the
# ledger, the report, log files, the executor's TLS files being read.
FD_MARGIN = 64
HOW_TO_RAISE = (
    "raise it with `ulimit -n` (hard limit: /etc/security/limits.conf) or LimitNOFILE= "
    "in a systemd unit"
)


def raise_to_hard() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now.

    Safe as a `preexec_fn` (no allocation beyond the call, nothing raised)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # Refused e.g. for an unlimited hard limit the kernel caps lower: keep what we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_connections(connections: int, *, what: str) -> None:
    """Exit 2 (before connecting) when `connections` open at once cannot fit under this
    process's limit, raised to the hard limit first. `what` names them for the user."""
    limit = raise_to_hard()
    if limit == resource.RLIM_INFINITY or connections + FD_MARGIN <= limit:
        return
    raise UsageError(
        f"{what}: {connections} connections need about {connections + FD_MARGIN} open files, "
        f"above this process's RLIMIT_NOFILE {limit} (the hard limit): {HOW_TO_RAISE}, "
        "or spread the fleet over shards (--shard)"
    )


def refused(code: int | None) -> str | None:
    """The reason for a connection the OS refused for lack of file descriptors, else None."""
    if code == errno.EMFILE:
        return f"EMFILE: too many open files (RLIMIT_NOFILE {soft_limit()}; {HOW_TO_RAISE})"
    if code == errno.ENFILE:
        return f"ENFILE: the system's open-file table is full (fs.file-max; {HOW_TO_RAISE})"
    return None
