"""Atomic writes (elf_async/files.py): secrets 0600 in a 0700 directory whatever was there."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from elf_async.files import write_private, write_public


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_0600_in_a_0700_directory_even_over_leftovers(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    directory.mkdir(mode=0o755)
    target = directory / "thing.key"
    leftover = directory / "thing.key.tmp"  # an interrupted write of the old scheme
    leftover.write_text("stale")
    os.chmod(leftover, 0o666)
    target.write_text("old")
    os.chmod(target, 0o644)
    write_private(target, "secret")
    assert target.read_text() == "secret"
    assert mode(target) == 0o600
    assert mode(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == ["thing.key", "thing.key.tmp"]


def test_public_files_are_0644_and_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                write_public(target, text)
        except BaseException as exc:  # pragma: no cover - the failure is the assertion
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(c * 1000,)) for c in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert mode(target) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_pipe_or_a_device_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    """`--report /dev/stdout` or a FIFO: replacing it with a regular file would lose the
    output (and, as root, replace /dev/full itself)."""
    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer can open
    try:
        write_public(fifo, "report\n")
        assert os.read(reader, 100) == b"report\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["report.pipe"]
