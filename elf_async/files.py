"""Files written atomically: secrets 0600 in a 0700 directory, the rest 0644.

Each write goes to a temporary file of its own, made 0600 by the kernel (``mkstemp``), then
renamed over the target: a reader never sees half a file, two writers never share a
temporary name, and a leftover temporary file of another run cannot lend its mode.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from elf_async.errors import UsageError


def make_private_dirs(path: Path) -> Path:
    """Create `path` and each missing parent 0700, whatever the umask. An existing directory
    keeps its mode: a state dir may be one the user made, such as `.`."""
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError as exc:
            if not directory.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)
                ) from exc
            continue  # made meanwhile by another process: its mode is its maker's
        os.chmod(directory, 0o700)  # mkdir's mode is masked by the umask
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and its missing parents) 0700, and tighten `path` if it exists."""
    make_private_dirs(path)
    os.chmod(path, 0o700)
    return path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Raises OSError naming `path` (a full disk, a read-only state dir), never the temporary
    file it happened in: that is the file the user can act on."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_private(path: Path, text: str) -> None:
    """Write a secret with mode 0600: it is never readable by others, even briefly."""
    ensure_private_dir(path.parent)
    _write_atomically(path, text.encode(), 0o600)


def write_public(path: Path, text: str) -> None:
    """Write a certificate, a report or a page (0644: not secret). A device or a pipe
    (/dev/stdout, a FIFO) cannot be replaced: it is written in place."""
    if path.exists() and not path.is_file() and not path.is_dir():
        with path.open("wb") as special:
            special.write(text.encode())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, text.encode(), 0o644)


def read_input(path: Path, *, option: str) -> bytes:
    """A file the user named with `option`, whole: a missing or unreadable one is one line
    naming both (`UsageError`), never a traceback."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from exc


def read_input_text(path: Path, *, option: str) -> str:
    """`read_input` as UTF-8 text (a file that is not is one line too)."""
    try:
        return read_input(path, option=option).decode()
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not UTF-8 text") from None
