"""The open-file limit: raised to the hard one, checked against the connections before any
connect, and named in a thing's error when the OS refuses a socket anyway."""

from __future__ import annotations

import errno
import resource
from collections.abc import Iterator

import pytest

from elf_async.dataplane.mqtt import explain
from elf_async.errors import UsageError
from elf_async.fdlimit import FD_MARGIN, check_connections, raise_to_hard, refused


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    """This process's soft limit lowered to 256 for the test; the hard one as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_to_the_hard_one(low_soft_limit: int) -> None:
    assert raise_to_hard() == low_soft_limit
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (low_soft_limit, low_soft_limit)


def test_connections_that_fit_under_the_hard_limit_pass_after_raising(low_soft_limit: int) -> None:
    check_connections(low_soft_limit - FD_MARGIN, what="the send")  # above the soft 256


def test_connections_above_the_hard_limit_name_it_and_how_to_raise_it(low_soft_limit: int) -> None:
    with pytest.raises(UsageError) as caught:
        check_connections(low_soft_limit, what="the send")
    message = str(caught.value)
    assert f"RLIMIT_NOFILE {low_soft_limit}" in message
    assert "ulimit -n" in message
    assert "LimitNOFILE" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            OSError(errno.EMFILE, "Too many open files"),
            "EMFILE: too many open files (RLIMIT_NOFILE ",
        ),
        (OSError(errno.ENFILE, "Too many open files in system"), "ENFILE: the system's open-file"),
        (RuntimeError("[Errno 24] Too many open files"), "EMFILE: too many open files"),
    ],
)
def test_a_socket_the_os_refuses_is_a_reason_that_names_the_limit(
    error: BaseException, reason: str
) -> None:
    failed = explain(error)
    assert failed.reason.startswith(reason), failed.reason
    assert failed.permanent  # retrying at once cannot find a descriptor the process lacks
    assert refused(errno.ECONNREFUSED) is None
