"""Progress of a batch of things, as the control plane reports it: how it is shown (a bar, a
line for logs, nothing) is the CLI's business (elf_async.cli._progress)."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, *, ok: bool) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, *, ok: bool) -> None:
        pass

    def close(self) -> None:
        pass
