"""The log writer's database connection: one plain DB-API connection, no SQLAlchemy.

The writer runs a handful of hand-written statements from one thread, so a pool and
a SQL toolkit buy it nothing, while importing SQLAlchemy would cost its process about
25 MB of memory. The rest of the proxy (keys, limits, queries, migrations) keeps its
SQLAlchemy Engine; `engine.database_target` turns DATABASE_URL into the target here,
and the Engine takes its driver settings from the functions below, so both connect
to the same place with the same settings:

- PostgreSQL through psycopg 3, never preparing statements server-side (Supabase's
  transaction pooler and pgbouncer hand each transaction to any server connection);
- SQLite in WAL mode with a busy timeout, each write transaction `BEGIN IMMEDIATE`.

What SQLAlchemy's pool did for the writer is done here: a connection is opened
when first needed, replaced after 5 minutes (a pooler or failover may have closed
it), dropped after any failure, and a statement that fails on a connection reused
from before is retried once on a fresh one (idempotent inserts make that safe).

`fault` tells the writer whose fault a failure is (docs/request-logs.md has the table):
the rows' ("row": set them aside, never wait for the database), a conflict worth one
immediate retry ("transient"), or the database's ("outage": spill and back off).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Fault = Literal["row", "transient", "outage"]

_RECYCLE_SECONDS = 300.0

# SQLSTATE classes (the first two characters) that say the rows themselves were refused:
# 21 cardinality violation (rows of one batch conflicting with each other), 22 data
# exception (a value out of range, too long, not representable in the database's
# encoding), 23 integrity constraint (NOT NULL, CHECK, a unique index), 54 program limit
# exceeded (54000: an index entry over its size limit). The same rows fail on every retry,
# so waiting for the database cannot help. Class 40 (serialization failure, deadlock) is
# a conflict with another transaction: retried at once. Every other class, and a failure
# without a SQLSTATE (the connection), is the database's: 08 connection, 25 read-only
# transaction (a failover to a standby), 42 privileges or a schema behind the code, 53
# disk full / out of memory / too many connections, 55 not accepting connections, 57
# statement timeout and administrator shutdown, 58 I/O error, XX internal error. No row
# change fixes those, and every row would fail alike: the rows wait in the spill file.
_ROW_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "54"})
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"40"})
# Refused on the client side before the server saw them: a value the driver cannot send
# (psycopg: NUL in text; sqlite3: a type it cannot bind, an integer past 64 bits; either:
# text the connection's encoding cannot hold).
_SQLITE_ROW_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.DataError,  # "string or blob too big" (SQLITE_TOOBIG)
    sqlite3.IntegrityError,  # a constraint (SQLITE_CONSTRAINT, SQLITE_MISMATCH)
    sqlite3.ProgrammingError,  # "Error binding parameter"
    sqlite3.InterfaceError,  # the same on older Pythons
    OverflowError,
    UnicodeEncodeError,
)


@dataclass(frozen=True)
class DatabaseTarget:
    """Where the writer connects. `dsn` is a file path or a libpq URL (it may hold a
    password, so it is left out of repr)."""

    kind: Literal["sqlite", "postgresql"]
    dsn: str = field(repr=False)
    connect_timeout: int = 5
    sqlite_busy_timeout_ms: int = 5000


class WriterDatabase:
    """One connection, used by one thread at a time (the writer's)."""

    def __init__(self, target: DatabaseTarget) -> None:
        self.target = target
        self.is_pg = target.kind == "postgresql"
        self._conn: Any = None
        self._opened_at = 0.0
        if self.is_pg:
            import psycopg  # only here: SQLite users never load it

            self._client_row_errors: tuple[type[BaseException], ...] = (
                psycopg.DataError,
                psycopg.IntegrityError,
                UnicodeEncodeError,
            )
        else:
            self._client_row_errors = _SQLITE_ROW_ERRORS

    def run(self, work: Callable[[Any], T]) -> T:
        """`work(cursor)` in one transaction, committed on return; raises on failure.

        A failure on a connection that had been idle in between may only mean the
        server closed it (pooler restart, failover), and a serialization failure or
        deadlock only that another transaction got there first: both are retried once,
        fresh. Refused rows are not: they would be refused again.
        """
        reused = self._conn is not None
        try:
            return self._transaction(work)
        except Exception as exc:
            fault = self.fault(exc)
            if fault == "row" or (not reused and fault != "transient"):
                raise
        return self._transaction(work)

    def ping(self) -> None:
        """Raise unless the database answers."""
        self._transaction(lambda cur: cur.execute("SELECT 1"))

    def fault(self, exc: BaseException) -> Fault:
        """Whose fault a failed write is: "row", "transient" or "outage" (see above)."""
        if self.is_pg:
            return pg_fault(exc, self._client_row_errors)
        return "row" if isinstance(exc, self._client_row_errors) else "outage"

    def is_data_error(self, exc: BaseException) -> bool:
        """True if the rows are at fault (retrying cannot help), not the database."""
        return self.fault(exc) == "row"

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection may fail too; it is gone either way.
            with contextlib.suppress(Exception):
                conn.close()

    # ------------------------------------------------------------------ inside

    def _transaction(self, work: Callable[[Any], T]) -> T:
        conn = self._connection()
        try:
            cur = conn.cursor()
            try:
                if not self.is_pg:
                    # Take the write lock first: the SELECT of present ids and the insert
                    # then see the same table, even with another writer on the file.
                    cur.execute("BEGIN IMMEDIATE")
                result = work(cur)
            finally:
                cur.close()
            conn.commit()
            return result
        except BaseException as exc:
            if self.fault(exc) != "outage":
                try:
                    conn.rollback()
                except Exception:
                    self.close()
            else:
                self.close()  # it may be broken: the next call opens a new one
            raise

    def _connection(self) -> Any:
        if self._conn is not None and time.monotonic() - self._opened_at > _RECYCLE_SECONDS:
            self.close()
        if self._conn is None:
            self._conn = self._connect_pg() if self.is_pg else self._connect_sqlite()
            self._opened_at = time.monotonic()
        return self._conn

    def _connect_pg(self) -> Any:
        import psycopg

        return psycopg.connect(self.target.dsn, **pg_connect_args(self.target.connect_timeout))

    def _connect_sqlite(self) -> sqlite3.Connection:
        path = self.target.dsn
        prepare_sqlite_file(path)
        busy_ms = int(self.target.sqlite_busy_timeout_ms)
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE).
        conn = sqlite3.connect(
            path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        set_sqlite_pragmas(conn, busy_ms)
        return conn


def pg_fault(exc: BaseException, client_row_errors: tuple[type[BaseException], ...]) -> Fault:
    """A PostgreSQL failure classified by its SQLSTATE class; one without a SQLSTATE is an
    outage unless the driver refused a value before sending it."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate[:2] in _ROW_SQLSTATE_CLASSES:
            return "row"
        if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return "transient"
        return "outage"
    return "row" if isinstance(exc, client_row_errors) else "outage"


def why(exc: BaseException) -> str:
    """A one-line reason without SQL, parameters or the failing row (they hold request data):
    for a PostgreSQL error only its SQLSTATE and primary message, not DETAIL's "Failing row
    contains"."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    msg = " ".join((primary or str(exc)).split())
    sqlstate = getattr(exc, "sqlstate", None)
    code = f" [{sqlstate}]" if isinstance(sqlstate, str) and sqlstate else ""
    return f"{type(exc).__name__}{code}: {msg[:300]}"


def pg_connect_args(connect_timeout: int) -> dict[str, Any]:
    """psycopg 3 connection settings, for the writer's connection and the Engine's."""
    return {
        # Never prepare server-side: transaction poolers break named prepared statements.
        "prepare_threshold": None,
        # Python text is Unicode: send it as UTF-8 and let the server convert, so a value a
        # LATIN1 database cannot hold is refused as that row's (22P05), not as a client-side
        # encoding error that looks like an outage.
        "client_encoding": "utf8",
        # libpq: give up on an unreachable host instead of hanging the caller.
        "connect_timeout": max(2, int(connect_timeout)),
        # Notice a peer that vanished (failover, NAT drop) within about half a minute.
        "keepalives": 1,
        "keepalives_idle": 15,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def prepare_sqlite_file(path: str | None) -> None:
    """sqlite:///data/proxy.db should work on a fresh machine, like the default does; and
    a new database file is private (0600), like the spill files: it holds who asked what.
    SQLite gives the -wal and -shm files it creates the database file's permissions."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return  # an existing file keeps the permissions its owner gave it
    os.close(fd)


def set_sqlite_pragmas(conn: Any, busy_timeout_ms: int) -> None:
    """WAL lets readers (usage queries, logs tail) run while the writer commits;
    busy_timeout turns a short lock conflict into a wait instead of an error."""
    cur = conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()
