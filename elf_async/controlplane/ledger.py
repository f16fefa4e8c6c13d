"""The crash-safe ledger: every AWS resource of a fleet and its state, in SQLite (WAL).

A resource is marked ``intended`` (committed) before the call that may create it and
``created`` right after, so a kill -9 at any instant leaves nothing in AWS that the
ledger cannot lead `clean` to. Commits are in autocommit mode with WAL and
synchronous=NORMAL: durable against a killed process, and well under a millisecond.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elf_async.errors import LedgerError

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite3"

# pending: never attempted; intended: the call may have run; created: it ran;
# inactive: a certificate set INACTIVE during clean; removed: gone from AWS.
State = Literal["pending", "intended", "created", "inactive", "removed"]
Step = Literal["cert", "thing", "principal", "policy"]
STEPS: tuple[Step, ...] = ("cert", "thing", "principal", "policy")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS things (
    idx INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    cert_state TEXT NOT NULL DEFAULT 'pending',
    cert_id TEXT,
    cert_arn TEXT,
    cert_intent_at REAL,
    thing_state TEXT NOT NULL DEFAULT 'pending',
    principal_state TEXT NOT NULL DEFAULT 'pending',
    policy_state TEXT NOT NULL DEFAULT 'pending',
    error_code TEXT,
    error_message TEXT,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS fleet_resources (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    aws_id TEXT,
    arn TEXT,
    updated_at REAL,
    PRIMARY KEY (kind, name)
);
"""


@dataclass(frozen=True, slots=True)
class ThingRecord:
    """One row of the ledger: a thing and the states of the resources it needs."""

    index: int
    name: str
    cert_state: State
    cert_id: str | None
    cert_arn: str | None
    cert_intent_at: float | None
    thing_state: State
    principal_state: State
    policy_state: State
    error_code: str | None
    error_message: str | None

    def state_of(self, step: Step) -> State:
        return getattr(self, f"{step}_state")  # type: ignore[no-any-return]

    @property
    def ready(self) -> bool:
        """Everything exists: the thing can connect."""
        return all(self.state_of(step) == "created" for step in STEPS)

    @property
    def gone(self) -> bool:
        """Nothing of this thing can exist in AWS any more."""
        return all(self.state_of(step) in ("pending", "removed") for step in STEPS)

    @property
    def status(self) -> str:
        if self.ready:
            return "ready"
        if self.gone:
            return "removed" if any(self.state_of(s) == "removed" for s in STEPS) else "pending"
        return "failed" if self.error_code else "partial"


@dataclass(frozen=True, slots=True)
class FleetResource:
    """A resource the whole fleet shares: its policy, a CA it registered."""

    kind: str
    name: str
    state: State
    aws_id: str | None
    arn: str | None


class Ledger:
    """SQLite ledger of one fleet, kept in ``<state-dir>/ledger.sqlite3``."""

    def __init__(self, connection: sqlite3.Connection, path: Path, *, new: bool = False) -> None:
        self._db = connection
        self.path = path
        self._new = new  # this open created the file

    @classmethod
    def exists(cls, state_dir: Path) -> bool:
        return (state_dir / LEDGER_FILE).is_file()

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = False) -> Ledger:
        """Open the ledger; create it (and the state dir, 0700) when `create` is set. A ledger
        created here that still records nothing when its `with` block fails is removed."""
        path = state_dir / LEDGER_FILE
        new = not path.exists()
        if new and not create:
            raise LedgerError(f"no fleet in {state_dir} (run `elf-async create` first)")
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"the ledger {path} is unreadable or corrupt ({exc})") from exc
        except OSError as exc:
            raise LedgerError(f"cannot write the state dir {state_dir}: {exc.strerror}") from exc
        if row is None:
            db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif not row[0].isdigit() or int(row[0]) > SCHEMA_VERSION:
            db.close()
            raise LedgerError(
                f"the ledger {path} has schema version {row[0]}, newer than this "
                f"elf-async understands ({SCHEMA_VERSION}): upgrade elf-async"
            )
        return cls(db, path, new=new)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        empty = self._new and exc_type is not None and self._records_nothing()
        self.close()
        if empty:  # a command that failed before its first AWS call leaves no ledger behind
            for suffix in ("", "-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def _records_nothing(self) -> bool:
        """No fleet id, thing or fleet resource: nothing in AWS can depend on this ledger (an
        empty one would still make `run` refuse the state dir, and `clean` look for a fleet)."""
        return not (
            "fleet_id" in self.meta()
            or self._db.execute("SELECT 1 FROM things LIMIT 1").fetchone()
            or self._db.execute("SELECT 1 FROM fleet_resources LIMIT 1").fetchone()
        )

    # fleet-wide facts ------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, **values: str | None) -> None:
        with self._transaction():
            for key, value in values.items():
                if value is None:
                    self._db.execute("DELETE FROM meta WHERE key=?", (key,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # fleet resources -------------------------------------------------------------
    def fleet_resource(self, kind: str, name: str) -> FleetResource | None:
        row = self._db.execute(
            "SELECT kind, name, state, aws_id, arn FROM fleet_resources WHERE kind=? AND name=?",
            (kind, name),
        ).fetchone()
        return FleetResource(*row) if row else None

    def fleet_resources(self) -> list[FleetResource]:
        rows = self._db.execute("SELECT kind, name, state, aws_id, arn FROM fleet_resources")
        return [FleetResource(*row) for row in rows.fetchall()]

    def mark_fleet_resource(
        self,
        kind: str,
        name: str,
        state: State,
        *,
        aws_id: str | None = None,
        arn: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO fleet_resources VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, name) DO UPDATE SET state=excluded.state, "
            "aws_id=COALESCE(excluded.aws_id, aws_id), arn=COALESCE(excluded.arn, arn), "
            "updated_at=excluded.updated_at",
            (kind, name, state, aws_id, arn, time.time()),
        )

    # things ----------------------------------------------------------------------
    def add_things(self, count: int, prefix: str, width: int) -> list[ThingRecord]:
        """Allocate `count` new things, indexes continuing after the highest one."""
        with self._transaction():
            (top,) = self._db.execute("SELECT COALESCE(MAX(idx), -1) FROM things").fetchone()
            rows = [(i, f"{prefix}-{i:0{width}d}") for i in range(top + 1, top + 1 + count)]
            self._db.executemany("INSERT INTO things (idx, name) VALUES (?, ?)", rows)
        return [self.thing(name) for _, name in rows]

    def adopt_thing(self, name: str, *, cert_arn: str | None, has_policy: bool) -> None:
        """Record a thing found in AWS (clean --fleet): everything it holds counts as created."""
        cert_state = "created" if cert_arn else "pending"
        with self._transaction():
            (top,) = self._db.execute("SELECT COALESCE(MAX(idx), -1) FROM things").fetchone()
            self._db.execute(
                "INSERT OR IGNORE INTO things (idx, name, cert_state, cert_id, cert_arn, "
                "thing_state, principal_state, policy_state, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'created', ?, ?, ?)",
                (
                    top + 1,
                    name,
                    cert_state,
                    cert_arn.rsplit("/", 1)[-1] if cert_arn else None,
                    cert_arn,
                    cert_state,
                    "created" if has_policy else "pending",
                    time.time(),
                ),
            )

    def thing(self, name: str) -> ThingRecord:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM things WHERE name=?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return ThingRecord(*row)

    def things(self, *, limit: int | None = None) -> list[ThingRecord]:
        """All things in index order (the first `limit` of them)."""
        query = f"SELECT {_COLUMNS} FROM things ORDER BY idx"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [ThingRecord(*row) for row in self._db.execute(query).fetchall()]

    def count_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.things():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    def mark(self, name: str, step: Step, state: State, **fields: object) -> None:
        """Record the state of one step of a thing, committed before this returns."""
        columns = {f"{step}_state": state, **fields, "updated_at": time.time()}
        unknown = set(columns) - _WRITABLE
        if unknown:
            raise ValueError(f"unknown ledger columns {sorted(unknown)}")
        assignments = ", ".join(f"{column}=?" for column in columns)
        self._db.execute(f"UPDATE things SET {assignments} WHERE name=?", (*columns.values(), name))

    def record_error(self, name: str, code: str | None, message: str | None) -> None:
        self._db.execute(
            "UPDATE things SET error_code=?, error_message=?, updated_at=? WHERE name=?",
            (code, message, time.time(), name),
        )

    def delete_things(self, names: list[str]) -> None:
        with self._transaction():
            self._db.executemany("DELETE FROM things WHERE name=?", [(n,) for n in names])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


_COLUMNS = (
    "idx, name, cert_state, cert_id, cert_arn, cert_intent_at, thing_state, "
    "principal_state, policy_state, error_code, error_message"
)
_WRITABLE = {
    "cert_state",
    "cert_id",
    "cert_arn",
    "cert_intent_at",
    "thing_state",
    "principal_state",
    "policy_state",
    "error_code",
    "error_message",
    "updated_at",
}
