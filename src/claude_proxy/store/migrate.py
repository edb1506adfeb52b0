"""Bring the database schema to the latest revision, safely from many replicas at once.

Used by `claude-proxy db upgrade` and by the server at startup
(CLAUDE_PROXY_AUTO_MIGRATE). Alembic is configured in code, so no alembic.ini
has to ship or be found at runtime.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from claude_proxy.store.engine import redacted_url

log = logging.getLogger("claude_proxy.store")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any fixed bigint works; this one spells "claudepx" in ASCII so it is easy to spot
# in pg_locks (classid/objid hold its two halves).
MIGRATION_LOCK_ID = 0x636C61756465_7078


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations, bound to `connection`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision this code ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, serialise migrations of one file (e.g. `serve --workers 2` starting
    together) with an flock next to it; PostgreSQL uses an advisory lock instead."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:":
        yield
        return
    with open(f"{db}.migrate-lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`; replicas calling this together run it exactly once."""
    with _sqlite_file_lock(engine), engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # A transaction-scoped advisory lock, taken in the same transaction as the
            # migrations themselves (PostgreSQL DDL is transactional, and Alembic joins
            # the transaction already open on this connection instead of committing).
            # A session lock (pg_advisory_lock ... pg_advisory_unlock) would not work
            # behind pgbouncer or Supabase's pooler in transaction mode: each
            # transaction may land on a different server connection, so the unlock
            # could run on a connection that never held the lock, leaving it stuck.
            # The xact lock is released by COMMIT or ROLLBACK, or when a dying
            # replica's connection closes. The next replica, once it gets the lock,
            # sees the committed alembic_version and has nothing left to do.
            # Consequence for future revisions: no CREATE INDEX CONCURRENTLY here.
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(alembic_config(conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
    if before != after:
        log.info("database migrated from %s to %s (%s)", before, after, redacted_url(engine.url))
