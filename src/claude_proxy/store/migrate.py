"""Bring the database schema to the latest revision, safely from many replicas at once.

Used by `claude-proxy db upgrade` and by the server at startup
(CLAUDE_PROXY_AUTO_MIGRATE). Alembic is configured in code, so no alembic.ini
has to ship or be found at runtime.

The server never imports Alembic itself: Alembic, Mako and the revision scripts
add about 12 MB to a process and would stay in a worker for its whole life, for
a step that runs once. `ensure_schema` reads the revision with plain SQL and,
only if the database is behind, runs `upgrade` in a short-lived child
(`python -m claude_proxy.child migrate`). So Alembic is imported only inside
the functions that need it, and importing this module costs nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, make_url, text
from sqlalchemy.exc import DBAPIError

from claude_proxy.store.engine import make_engine, redacted_url

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("claude_proxy.store")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions/: the server compares the database with it
# without loading Alembic. A test checks it against Alembic's own head.
HEAD_REVISION = "0003"
# Any fixed bigint works; this one spells "claudepx" in ASCII so it is easy to spot
# in pg_locks (classid/objid hold its two halves).
MIGRATION_LOCK_ID = 0x636C61756465_7078
# How the server hands the database URL to the migration child: the environment, not
# argv (a password in argv is visible to every user of the machine in `ps`).
URL_ENV = "CLAUDE_PROXY_MIGRATE_DATABASE_URL"
_STDERR_LINES = 3  # of a failed child's stderr, kept in the MigrationError


class MigrationError(RuntimeError):
    """The migration child failed; the message holds the end of its stderr."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations, bound to `connection`."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision this code ships, according to Alembic."""
    from alembic.script import ScriptDirectory

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
    """The revision the database is at (None before the first migration), read by Alembic."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def database_revision(engine: Engine) -> str | None:
    """The revision the database is at, read with plain SQL (no Alembic): None if
    alembic_version does not exist yet or does not hold exactly one revision."""
    with engine.connect() as conn:
        # Look in the catalog first rather than catching a failed SELECT: on
        # PostgreSQL a failed statement aborts the whole transaction.
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return str(rows[0]) if len(rows) == 1 else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`; replicas calling this together run it exactly once."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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


def ensure_schema(engine: Engine, process: Sequence[str]) -> bool:
    """What the server runs at startup: if the database is behind HEAD_REVISION, migrate
    it in a child process (`process`: the command that runs `main`; `upgrade`, with its
    locks), so this process never loads
    Alembic. True if a migration ran, False if the schema was already current.
    Raises MigrationError if the child failed, or the database's error if it is
    unreachable."""
    if database_revision(engine) == HEAD_REVISION:
        return False
    env = dict(os.environ)
    env[URL_ENV] = engine.url.render_as_string(hide_password=False)
    # stdout (where the child logs, like every process of the proxy) is the server's
    # own; stderr is kept to say why it failed.
    proc = subprocess.run(
        list(process),
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-_STDERR_LINES:]
        raise MigrationError(
            f"migration process exited with code {proc.returncode}: "
            + (" | ".join(tail) or "no output")
        )
    return True


def _summary(exc: BaseException, password: str | None) -> str:
    """One line about `exc` for the parent, without the password even if a driver quoted it."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line.replace(password, "***") if password else line


def main() -> int:
    """The migration process: upgrade the database at $URL_ENV to head (child.py runs it)."""
    url = os.environ.pop(URL_ENV, "")
    if not url:
        print(f"{URL_ENV} is not set", file=sys.stderr)
        return 2
    try:
        password = make_url(url).password
    except Exception:
        password = None
    try:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
    except Exception as exc:
        if not isinstance(exc, DBAPIError):
            # Not the database being away (the server retries that quietly): a bug
            # worth its traceback, in the server's log like any other line.
            log.exception("database migration failed")
        print(_summary(exc, str(password) if password else None), file=sys.stderr)
        return 1
    return 0
