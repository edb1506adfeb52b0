"""One way to turn DATABASE_URL into an Engine, for SQLite and PostgreSQL alike.

Users paste URLs as their provider hands them out (`postgres://...` from
Supabase or Heroku, `postgresql://...`, `sqlite:///path`), so the driver is
chosen here rather than in the URL. PostgreSQL always goes through psycopg 3
with server-side prepared statements disabled: Supabase's transaction pooler
(port 6543) and pgbouncer in transaction mode hand each transaction to any
server connection, where a statement prepared by another transaction does not
exist.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from claude_proxy.store.writer_db import (
    DatabaseTarget,
    pg_connect_args,
    prepare_sqlite_file,
    set_sqlite_pragmas,
)

# Query parameters some tools add to pooler URLs that libpq does not know.
_FOREIGN_PARAMS = ("pgbouncer", "connection_limit", "pool_timeout")
_PASSWORD_RE = re.compile(r"(://[^:/@]*:)[^@]*@")


def backend(database_url: str | URL) -> str:
    """'sqlite' or 'postgresql' for any spelling of either; ValueError otherwise."""
    url = _parse(database_url)
    name = url.get_backend_name()
    if name in ("postgresql", "postgres"):
        return "postgresql"
    if name == "sqlite":
        return "sqlite"
    raise ValueError(f"unsupported database {name!r}: use sqlite:///path or postgresql://...")


def normalize_url(database_url: str | URL) -> URL:
    """The URL with the driver SQLAlchemy should use (psycopg 3 for PostgreSQL)."""
    url = _parse(database_url)
    if backend(url) == "sqlite":
        return url.set(drivername="sqlite+pysqlite") if url.drivername == "sqlite" else url
    query = {k: v for k, v in url.query.items() if k not in _FOREIGN_PARAMS}
    return url.set(drivername="postgresql+psycopg", query=query)


def redacted_url(database_url: str | URL) -> str:
    """The URL safe to log: the password replaced by ***, even if the URL does not parse."""
    try:
        return _parse(database_url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_RE.sub(r"\1***@", str(database_url))


def database_target(
    database_url: str | URL, *, connect_timeout: int = 5, sqlite_busy_timeout_ms: int = 5000
) -> DatabaseTarget:
    """The same database for the log writer's plain DB-API connection (store/writer_db.py)."""
    url = normalize_url(database_url)
    common = {"connect_timeout": connect_timeout, "sqlite_busy_timeout_ms": sqlite_busy_timeout_ms}
    if backend(url) == "sqlite":
        return DatabaseTarget("sqlite", url.database or ":memory:", **common)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return DatabaseTarget("postgresql", dsn, **common)


def make_engine(
    database_url: str | URL,
    *,
    pool_size: int = 3,
    max_overflow: int = 2,
    pool_timeout: float = 10.0,
    connect_timeout: int = 5,
    sqlite_busy_timeout_ms: int = 5000,
) -> Engine:
    """A pooled sync Engine; `connect_timeout` bounds how long an outage can stall a caller."""
    url = normalize_url(database_url)
    if backend(url) == "sqlite":
        prepare_sqlite_file(url.database)
        return _sqlite_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            busy_timeout_ms=sqlite_busy_timeout_ms,
        )
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # A pooler or failover may have closed an idle connection; check before use.
        pool_pre_ping=True,
        pool_recycle=300,
        connect_args=pg_connect_args(connect_timeout),
        # Error messages must not carry statement parameters: they hold request data and
        # key hashes, and errors get logged.
        hide_parameters=True,
    )


def _sqlite_engine(
    url: URL, *, pool_size: int, max_overflow: int, pool_timeout: float, busy_timeout_ms: int
) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        # The writer thread and request handlers use different threads; the pool
        # hands a connection to one thread at a time, so this check is only noise.
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        hide_parameters=True,  # as for PostgreSQL: no request data or key hashes in errors
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        set_sqlite_pragmas(dbapi_conn, busy_timeout_ms)

    return engine


def _parse(database_url: str | URL) -> URL:
    if isinstance(database_url, URL):
        return database_url
    text = database_url.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    return make_url(text)
