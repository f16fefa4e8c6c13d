"""Filesystem faults, made real: a disk that fills up (a small tmpfs under the keys) and a
read-only state dir (immutable with chattr, or without write permission when not root).
Each is one line naming the path; a full disk is recovered from by running create again; a
local stack in a read-only state dir can still be stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import Cli, assert_one_line_error
from support.local import LocalCli, alive


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mount_point`: writes beyond it fail with ENOSPC."""
    mount_point.mkdir()
    mounted = os.geteuid() == 0 and _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                         str(mount_point))  # fmt: skip
    if not mounted:
        pytest.skip("a disk that fills up needs root, to mount a small tmpfs")
    try:
        yield mount_point
    finally:
        _run("umount", str(mount_point))


def grow(mount_point: Path, size: str) -> None:
    assert _run("mount", "-o", f"remount,size={size}", str(mount_point))


@contextlib.contextmanager
def read_only(tree: Path) -> Iterator[None]:
    """`tree` and everything in it cannot be written, as on a read-only mount: immutable
    (chattr +i) as root, whom permissions do not stop; without write permission otherwise."""
    if os.geteuid() == 0:
        if not _run("chattr", "-R", "+i", str(tree)):
            pytest.skip("chattr +i is not supported on this filesystem")
        try:
            yield
        finally:
            assert _run("chattr", "-R", "-i", str(tree))
        return
    modes = {path: path.stat().st_mode for path in [tree, *tree.rglob("*")]}
    for path in modes:
        path.chmod(0o500 if path.is_dir() else 0o400)
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def _run(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def test_a_full_disk_during_create_is_one_line_and_create_finishes_later(
    cli: Cli, iot: Any, tmp_path: Path
) -> None:
    cli.state_dir.mkdir()
    with small_disk(tmp_path / "disk", "8k") as disk:  # two small files, not six
        (cli.state_dir / "certs").symlink_to(disk)
        full = cli("create", "6", "--key-type", "ec")
        assert_one_line_error(full, 2, "No space left on device", str(cli.state_dir / "certs"))
        assert "create` again" in full.stderr
        grow(disk, "1m")
        again = cli("create", "6", "--key-type", "ec")
        assert again.returncode == 0, again.stderr
        assert "6 in the fleet" in again.stdout
        cleaned = cli("clean")
        assert cleaned.returncode == 0, cleaned.stderr
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []


def test_a_read_only_state_dir_is_named_as_such(cli: Cli, iot: Any) -> None:
    assert cli("create", "1", "--key-type", "ec").returncode == 0
    with read_only(cli.state_dir):
        for command in (["status"], ["create", "1"], ["send", "--count", "1"], ["clean"]):
            result = cli(*command)
            assert_one_line_error(result, 2, str(cli.state_dir), "not writable")
            assert "corrupt" not in result.stderr
    assert cli("clean").returncode == 0


def test_local_down_stops_the_stack_in_a_read_only_state_dir(local_cli: LocalCli) -> None:
    up = local_cli("local", "up")
    assert up.returncode == 0, up.stderr
    stack = local_cli.stack()
    assert stack is not None
    pids = [stack["moto"]["pid"], stack["mosquitto"]["pid"]]
    with read_only(local_cli.state_dir):
        again = local_cli("local", "up")
        assert_one_line_error(again, 2, str(local_cli.state_dir))
        down = local_cli("local", "down")
        assert_one_line_error(down, 1, "is stopped", "stack.json", "local down` again")
        assert not any(alive(pid) for pid in pids)
    finished = local_cli("local", "down")  # writable again: the record goes
    assert finished.returncode == 0, finished.stderr
    assert local_cli("local", "status").stdout == "no local stack is running\n"
