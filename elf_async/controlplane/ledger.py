"""The crash-safe ledger: every AWS resource of a fleet and its state, in SQLite (WAL).

A resource is marked ``intended`` (committed) before the call that may create it and
``created`` right after, so a kill -9 at any instant leaves nothing in AWS that the
ledger cannot lead `clean` to. Commits are in autocommit mode with WAL and
synchronous=NORMAL: durable against a killed process, and well under a millisecond.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from elf_async.errors import LedgerError
from elf_async.files import make_private_dirs

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite3"

# pending: never attempted; intended: the call may have run; created: it ran;
# inactive: a certificate set INACTIVE during clean; removed: gone from AWS.
State = Literal["pending", "intended", "created", "inactive", "removed"]
Step = Literal["cert", "thing", "principal", "policy"]
STEPS: tuple[Step, ...] = ("cert", "thing", "principal", "policy")
# A shared identity's row (`create --identity shared`): its certificate and the policy attached
# to it; its thing and principal steps stay pending, so `clean` and recovery need no case of
# their own.
SHARED_STEPS: tuple[Step, ...] = ("cert", "policy")

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
        return self.ready_for(STEPS)

    def ready_for(self, steps: Sequence[Step]) -> bool:
        return all(self.state_of(step) == "created" for step in steps)

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

    def __init__(self, db: _Db, path: Path, *, new: bool = False) -> None:
        self._db = db
        self.path = path
        self._new = new  # this open created the file

    @classmethod
    def exists(cls, state_dir: Path) -> bool:
        return (state_dir / LEDGER_FILE).is_file()

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = False) -> Ledger:
        """Open the ledger, checked before anyone acts on it; create it (0600, and the state
        dir 0700) when `create` is set and there is none.

        A ledger is made whole, schema and version, in a file of its own renamed into place,
        so one that exists but holds no schema (an empty file, another database) was never
        ours: it is refused rather than read as "no fleet", which once sent `clean` to AWS's
        default endpoint. So is one that is corrupt (SQLite's quick check), newer than this
        version, or that records things without the fleet they belong to.
        """
        path = state_dir / LEDGER_FILE
        new = not path.exists()
        try:
            if new:
                if not create:
                    raise LedgerError(f"no fleet in {state_dir} (run `elf-async create` first)")
                _create(path)
            if path.stat().st_size == 0:
                raise LedgerError(
                    f"the ledger {path} is empty (0 bytes) and records no fleet: {_ADVICE}"
                )
        except OSError as exc:
            raise LedgerError(_os_problem(path, exc)) from exc
        except sqlite3.DatabaseError as exc:  # making it: a full disk
            raise _unusable(path, exc, None) from exc
        try:
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise _unusable(path, exc, None) from exc
        db = _Db(connection, path)
        try:
            _check(db)
            db.run("PRAGMA journal_mode=WAL")
            db.run("PRAGMA synchronous=NORMAL")
            db.run("PRAGMA busy_timeout=5000")
        except BaseException:
            db.close()
            raise
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
            or self._db.rows("SELECT 1 FROM things LIMIT 1")
            or self._db.rows("SELECT 1 FROM fleet_resources LIMIT 1")
        )

    # fleet-wide facts ------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self._db.rows("SELECT key, value FROM meta"))

    def set_meta(self, **values: str | None) -> None:
        with self._transaction():
            for key, value in values.items():
                if value is None:
                    self._db.run("DELETE FROM meta WHERE key=?", (key,))
                else:
                    self._db.run("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # fleet resources -------------------------------------------------------------
    def fleet_resource(self, kind: str, name: str) -> FleetResource | None:
        rows = self._db.rows(
            "SELECT kind, name, state, aws_id, arn FROM fleet_resources WHERE kind=? AND name=?",
            (kind, name),
        )
        return FleetResource(*rows[0]) if rows else None

    def fleet_resources(self) -> list[FleetResource]:
        rows = self._db.rows("SELECT kind, name, state, aws_id, arn FROM fleet_resources")
        return [FleetResource(*row) for row in rows]

    def mark_fleet_resource(
        self,
        kind: str,
        name: str,
        state: State,
        *,
        aws_id: str | None = None,
        arn: str | None = None,
    ) -> None:
        self._db.run(
            "INSERT INTO fleet_resources VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, name) DO UPDATE SET state=excluded.state, "
            "aws_id=COALESCE(excluded.aws_id, aws_id), arn=COALESCE(excluded.arn, arn), "
            "updated_at=excluded.updated_at",
            (kind, name, state, aws_id, arn, time.time()),
        )

    # things ----------------------------------------------------------------------
    def add_things(
        self, count: int, prefix: str, width: int, *, first: int | None = None
    ) -> list[ThingRecord]:
        """Allocate `count` new things, indexes continuing after the highest one, or from
        `first` (a shard's slice of the fleet's indexes)."""
        with self._transaction():
            [(top,)] = self._db.rows("SELECT COALESCE(MAX(idx), -1) FROM things")
            start = top + 1 if first is None else first
            rows = [(i, f"{prefix}-{i:0{width}d}") for i in range(start, start + count)]
            self._db.run_many("INSERT INTO things (idx, name) VALUES (?, ?)", rows)
        return [self.thing(name) for _, name in rows]

    def add_identity(self, name: str) -> ThingRecord:
        """The row of a shared identity (once): its steps are recorded like a thing's."""
        with self._transaction():
            [(top,)] = self._db.rows("SELECT COALESCE(MAX(idx), -1) FROM things")
            self._db.run("INSERT OR IGNORE INTO things (idx, name) VALUES (?, ?)", (top + 1, name))
        return self.thing(name)

    def adopt_thing(self, name: str, *, cert_arn: str | None, has_policy: bool) -> None:
        """Record a thing found in AWS (clean --fleet): everything it holds counts as created."""
        cert_state = "created" if cert_arn else "pending"
        with self._transaction():
            [(top,)] = self._db.rows("SELECT COALESCE(MAX(idx), -1) FROM things")
            self._db.run(
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
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM things WHERE name=?", (name,))
        if not rows:
            raise KeyError(name)
        return ThingRecord(*rows[0])

    def things(self, *, limit: int | None = None) -> list[ThingRecord]:
        """All things in index order (the first `limit` of them)."""
        query = f"SELECT {_COLUMNS} FROM things ORDER BY idx"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [ThingRecord(*row) for row in self._db.rows(query)]

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
        self._db.run(f"UPDATE things SET {assignments} WHERE name=?", (*columns.values(), name))

    def record_error(self, name: str, code: str | None, message: str | None) -> None:
        self._db.run(
            "UPDATE things SET error_code=?, error_message=?, updated_at=? WHERE name=?",
            (code, message, time.time(), name),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: _Db) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.run("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.run("ROLLBACK" if exc_type else "COMMIT")


class _Db:
    """The ledger's connection: every read and write goes through here, so a failure is one
    `LedgerError` naming the file and what to do, never SQLite's traceback."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self.connection.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise _unusable(self.path, exc, self.connection) from exc

    def run(self, sql: str, params: Sequence[object] = ()) -> None:
        self.rows(sql, params)

    def run_many(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        try:
            self.connection.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            raise _unusable(self.path, exc, self.connection) from exc

    def close(self) -> None:
        self.connection.close()


_ADVICE = (
    "move it aside (or delete it if no fleet was made from this state dir); the fleet's "
    "things stay in AWS, where `elf-async clean --fleet <fleet id>` finds them (the id is in "
    "every thing name: elf-<fleet id>-00000)"
)
_CORRUPT_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_CANNOT_WRITE_CODES = frozenset({"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"})


def _create(path: Path) -> None:
    """A new ledger, schema and version, written to a file of its own (0600) and renamed
    into place: a ledger is never seen half made."""
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        connection = sqlite3.connect(tmp, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            connection.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        finally:
            connection.close()  # checkpoints: everything is in `tmp`, its -wal is gone
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, f"{tmp}-wal", f"{tmp}-shm"):
            Path(leftover).unlink(missing_ok=True)
        raise


def _check(db: _Db) -> None:
    """Refuse a ledger that is not ours, newer than us, corrupt, or without its fleet."""
    path = db.path
    tables = {name for (name,) in db.rows("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"meta", "things", "fleet_resources"} <= tables:
        raise LedgerError(f"{path} is not an elf-async ledger (it has no ledger tables): {_ADVICE}")
    meta = dict(db.rows("SELECT key, value FROM meta"))
    version = meta.get("schema_version")
    if version is None:
        raise LedgerError(f"{path} is not an elf-async ledger (it has no version): {_ADVICE}")
    if not version.isdigit() or int(version) > SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger {path} has schema version {version}, newer than this "
            f"elf-async understands ({SCHEMA_VERSION}): upgrade elf-async"
        )
    if db.rows("PRAGMA quick_check") != [("ok",)]:
        raise _corrupt(path, "SQLite's quick check failed", meta.get("fleet_id"))
    missing = [key for key in ("region", "account") if key not in meta]
    if "fleet_id" in meta and missing:
        raise LedgerError(
            f"the ledger {path} records fleet {meta['fleet_id']} without its "
            f"{' and '.join(missing)}: {_ADVICE}"
        )
    if "fleet_id" not in meta and (
        db.rows("SELECT 1 FROM things LIMIT 1") or db.rows("SELECT 1 FROM fleet_resources LIMIT 1")
    ):
        raise LedgerError(
            f"the ledger {path} records things but not the fleet they belong to: {_ADVICE}"
        )


def _unusable(path: Path, exc: sqlite3.DatabaseError, db: sqlite3.Connection | None) -> LedgerError:
    """What a failed read or write says: corruption (confirmed by SQLite's integrity check),
    a state dir that cannot be written, a full disk, or SQLite's own words."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    if code == "SQLITE_FULL":
        return LedgerError(
            f"cannot write the ledger {path}: the disk is full; free some space and run the "
            "command again (what was done so far is recorded)"
        )
    if code in _CANNOT_WRITE_CODES and not _writable(path):
        return LedgerError(
            f"cannot use the ledger {path}: the state dir {path.parent} is not writable "
            "(SQLite needs to write next to the ledger even to read it); make it writable"
        )
    if code in _CORRUPT_CODES or (db is not None and not _intact(db)):
        return _corrupt(path, str(exc), _fleet_id(db))
    return LedgerError(f"the ledger {path} could not be read or written: {exc}")


def _writable(path: Path) -> bool:
    return all(os.access(p, os.W_OK) for p in (path.parent, path) if p.exists())


def _intact(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    except sqlite3.DatabaseError:
        return False


def _fleet_id(db: sqlite3.Connection | None) -> str | None:
    """The fleet id, if the ledger still tells it: it is what `clean --fleet` needs."""
    if db is None:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key='fleet_id'").fetchone()
    except sqlite3.DatabaseError:
        return None
    return str(row[0]) if row else None


def _corrupt(path: Path, detail: str, fleet_id: str | None) -> LedgerError:
    advice = (
        f"move it aside; the fleet's things stay in AWS, where `elf-async clean --fleet "
        f"{fleet_id}` finds them"
        if fleet_id
        else _ADVICE
    )
    return LedgerError(f"the ledger {path} is corrupt ({detail}): {advice}")


def _os_problem(path: Path, exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path.parent) else ""
    return f"cannot write the state dir {path.parent}: {exc.strerror or exc}{where}"


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
