"""The ledger: thing names, the state of each step, errors, counts by status."""

from __future__ import annotations

from pathlib import Path

import pytest

from elf_async.controlplane.ledger import Ledger
from elf_async.errors import LedgerError


def test_ledger_states(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no fleet"):
        Ledger.open(tmp_path)
    with Ledger.open(tmp_path, create=True) as ledger:
        first = ledger.add_things(2, "elf-x", 5)
        assert [r.name for r in first] == ["elf-x-00000", "elf-x-00001"]
        assert [r.name for r in ledger.add_things(1, "elf-x", 5)] == ["elf-x-00002"]
        assert first[0].status == "pending"
        for step in ("cert", "thing", "principal", "policy"):
            ledger.mark("elf-x-00000", step, "created")  # type: ignore[arg-type]
        assert ledger.thing("elf-x-00000").ready
        ledger.mark("elf-x-00001", "thing", "intended")
        ledger.record_error("elf-x-00001", "AccessDeniedException", "no")
        assert ledger.count_by_status() == {"ready": 1, "failed": 1, "pending": 1}
        with pytest.raises(ValueError, match="unknown"):
            ledger.mark("elf-x-00000", "thing", "created", password="x")
