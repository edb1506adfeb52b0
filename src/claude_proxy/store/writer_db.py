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
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_RECYCLE_SECONDS = 300.0


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

            self._data_errors: tuple[type[BaseException], ...] = (
                psycopg.DataError,
                psycopg.IntegrityError,
            )
        else:
            # ProgrammingError: a value SQLite cannot bind ("Error binding parameter").
            self._data_errors = (
                sqlite3.DataError,
                sqlite3.IntegrityError,
                sqlite3.ProgrammingError,
                OverflowError,
            )

    def run(self, work: Callable[[Any], T]) -> T:
        """`work(cursor)` in one transaction, committed on return; raises on failure.

        A failure on a connection that had been idle in between may only mean the
        server closed it (pooler restart, failover): that is retried once, fresh.
        """
        reused = self._conn is not None
        try:
            return self._transaction(work)
        except Exception as exc:
            if not reused or self.is_data_error(exc):
                raise
        return self._transaction(work)

    def ping(self) -> None:
        """Raise unless the database answers."""
        self._transaction(lambda cur: cur.execute("SELECT 1"))

    def is_data_error(self, exc: BaseException) -> bool:
        """True if the rows are at fault (retrying cannot help), not the database."""
        return isinstance(exc, self._data_errors)

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
            if self.is_data_error(exc):
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
        make_sqlite_dir(path)
        busy_ms = int(self.target.sqlite_busy_timeout_ms)
        # isolation_level=None: transactions are begun explicitly (BEGIN IMMEDIATE).
        conn = sqlite3.connect(
            path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        set_sqlite_pragmas(conn, busy_ms)
        return conn


def why(exc: BaseException) -> str:
    """A one-line reason without SQL, parameters or the failing row (they hold request data):
    for a PostgreSQL error only its primary message, not DETAIL's "Failing row contains"."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    msg = " ".join((primary or str(exc)).split())
    return f"{type(exc).__name__}: {msg[:300]}"


def pg_connect_args(connect_timeout: int) -> dict[str, Any]:
    """psycopg 3 connection settings, for the writer's connection and the Engine's."""
    return {
        # Never prepare server-side: transaction poolers break named prepared statements.
        "prepare_threshold": None,
        # libpq: give up on an unreachable host instead of hanging the caller.
        "connect_timeout": max(2, int(connect_timeout)),
        # Notice a peer that vanished (failover, NAT drop) within about half a minute.
        "keepalives": 1,
        "keepalives_idle": 15,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }


def make_sqlite_dir(path: str | None) -> None:
    """sqlite:///data/proxy.db should work on a fresh machine, like the default does."""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


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
