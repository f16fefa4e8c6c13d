"""Files written atomically: secrets 0600 in a 0700 directory, the rest 0644.

Each write goes to a temporary file of its own, made 0600 by the kernel (``mkstemp``), then
renamed over the target: a reader never sees half a file, two writers never share a
temporary name, and a leftover temporary file of another run cannot lend its mode.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def ensure_private_dir(path: Path) -> Path:
    """Create `path` as 0700 (and tighten it if it exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
