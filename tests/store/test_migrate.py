"""Migrations: idempotent, equal to the schema the code binds to, and safe from many replicas."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, make_url, text

from claude_proxy.child import MIGRATE_PROCESS
from claude_proxy.store import migrate
from claude_proxy.store.migrate import (
    HEAD_REVISION,
    MIGRATION_LOCK_ID,
    MigrationError,
    current_revision,
    database_revision,
    ensure_schema,
    head_revision,
    upgrade,
)
from claude_proxy.store.schema import metadata
from tests.helpers import wait_until
from tests.store.conftest import Backend, pg_admin

COLUMNS = {
    "id", "created_at", "key_id", "endpoint", "method", "model", "stream", "status_code",
    "error_type", "error_message", "stop_reason", "message_id", "input_tokens", "output_tokens",
    "cache_creation_input_tokens", "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens", "cache_read_input_tokens", "cost_usd", "latency_ms",
    "ttft_ms", "upstream_request_id", "client_disconnected", "upstream_attempts", "client_ip",
    "user_agent", "anthropic_beta", "metadata_user_id", "claude_code_session_id",
    "refusal", "request_body", "response_body", "logged_at", "user_id", "group_id",
}  # fmt: skip


def test_upgrade_twice_is_idempotent_and_matches_the_schema(backend: Backend) -> None:
    engine = backend.engine(backend.new_database_url())
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0003"

    insp = inspect(engine)
    assert {c["name"] for c in insp.get_columns("request_logs")} == COLUMNS
    assert insp.get_pk_constraint("request_logs")["constrained_columns"] == ["id"]
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("request_logs")}
    assert indexes == {
        "ix_request_logs_created_at": ["created_at"],
        "ix_request_logs_key_id_created_at": ["key_id", "created_at"],
        "ix_request_logs_model_created_at": ["model", "created_at"],
        "ix_request_logs_logged_at": ["logged_at"],
        "ix_request_logs_user_id_created_at": ["user_id", "created_at"],
        "ix_request_logs_group_id_created_at": ["group_id", "created_at"],
    }
    assert {
        "api_keys",
        "key_spend",
        "rate_usage",
        "proxy_instances",
        "users",
        "groups",
        "user_groups",
        "org_policy",
        "audit_log",
        "device_grants",
        "budget_alerts",
    } <= set(insp.get_table_names())
    assert insp.get_pk_constraint("key_spend")["constrained_columns"] == ["key_id", "period"]
    # What the migrations built is what schema.py (the writer and the queries) expects.
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if d[0] != "remove_table" or d[1].name != "alembic_version"] == []


@pytest.mark.parametrize("backend", ["postgres", "pgbouncer"], indirect=True)
def test_replicas_migrating_together_run_it_once(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Two replicas start at once: the advisory lock makes one wait for the other."""
    url = backend.new_database_url()
    dbname = url.rsplit("/", 1)[1]
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            upgrade(backend.engine(url))
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="claude_proxy.store")
    # Hold the migration lock ourselves (directly on PostgreSQL) so both replicas
    # are provably queued behind it before either can start.
    with pg_admin(dbname, autocommit=False) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        threads = [threading.Thread(target=replica) for _ in range(2)]
        for t in threads:
            t.start()

        wait_until(
            lambda: _advisory_waiters(dbname) == 2,
            what="both replicas waiting on the migration lock",
        )
        holder.rollback()
    for t in threads:
        t.join(30)
    assert errors == []
    engine = backend.engine(url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        # Nobody holds the lock any more: a transaction-scoped lock cannot leak.
        advisory = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert conn.execute(text(advisory)).scalar() == 0
    migrated = [
        r for r in caplog.records if f"migrated from None to {head_revision()}" in r.getMessage()
    ]
    assert len(migrated) == 1


def test_migrations_run_from_the_installed_package_without_alembic_ini(
    backend: Backend, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(str(tmp_path))  # no alembic.ini anywhere near
    engine = backend.engine(backend.new_database_url())
    upgrade(engine)
    assert current_revision(engine) == head_revision()


# ------------------------------------------------- the server's way: a child process


def test_head_revision_constant_is_alembics_head() -> None:
    """The server compares the database with HEAD_REVISION without loading Alembic:
    a new revision file must bump it."""
    assert head_revision() == HEAD_REVISION


def test_database_revision_reads_the_version_without_alembic(backend: Backend) -> None:
    engine = backend.engine(backend.new_database_url())
    assert database_revision(engine) is None  # no alembic_version table yet
    # On PostgreSQL a failed SELECT would have aborted the transaction: this one still works.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    upgrade(engine)
    assert database_revision(engine) == current_revision(engine) == HEAD_REVISION


def test_ensure_schema_migrates_a_fresh_database_in_a_child_then_does_nothing(
    backend: Backend, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = backend.engine(backend.new_database_url())
    assert ensure_schema(engine, MIGRATE_PROCESS) is True
    assert database_revision(engine) == current_revision(engine) == HEAD_REVISION
    # The child logs like the server (to the same stdout), so the line is in its output.
    out = capfd.readouterr().out
    assert f"database migrated from None to {HEAD_REVISION}" in out

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a current schema must not start a migration process")

    monkeypatch.setattr(migrate.subprocess, "run", no_child)
    assert ensure_schema(engine, MIGRATE_PROCESS) is False
    assert "migrated" not in capfd.readouterr().out


def test_ensure_schema_failure_says_why_without_the_password(
    backend: Backend, capfd: pytest.CaptureFixture[str]
) -> None:
    """A database at a revision this code does not know: the child fails, the error
    carries its reason; the password (ignored by trust auth) appears nowhere."""
    password = "s3cret-Pa55word"
    url = backend.new_database_url()
    if backend.is_pg:
        url = make_url(url).set(password=password).render_as_string(hide_password=False)
    engine = backend.engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError) as err:
        ensure_schema(engine, MIGRATE_PROCESS)
    message = str(err.value)
    assert "exited with code 1" in message
    assert "9999" in message  # Alembic's "Can't locate revision identified by '9999'"
    out, errout = capfd.readouterr()
    assert "database migration failed" in out  # the child's traceback, in the log
    for text_ in (message, out, errout):
        assert password not in text_


def test_ensure_schema_from_two_replicas_migrates_once(
    backend: Backend, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two replicas start together on a fresh database: both start a migration process,
    the lock (advisory on PostgreSQL, flock on SQLite) lets one migrate; the other then
    finds nothing to do."""
    url = backend.new_database_url()
    engine = backend.engine(url)
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            ensure_schema(backend.engine(url, sqlite_busy_timeout_ms=5000), MIGRATE_PROCESS)
        except BaseException as exc:
            errors.append(exc)

    # Create the (still empty) SQLite file in WAL mode first: two connections switching a
    # brand-new file to WAL at the same instant may get "database is locked" at once,
    # without the busy timeout, which is not what this test is about.
    with engine.connect():
        pass
    threads = [threading.Thread(target=replica) for _ in range(2)]
    with _migration_lock_held(backend, url) as waiting:
        for t in threads:
            t.start()
        wait_until(
            lambda: bool(errors) or waiting() == 2,
            what="both migration processes waiting on the lock",
        )
        assert errors == []
    for t in threads:
        t.join(60)
    assert errors == []
    assert database_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert capfd.readouterr().out.count(f"database migrated from None to {HEAD_REVISION}") == 1


@contextmanager
def _migration_lock_held(backend: Backend, url: str) -> Iterator[Callable[[], int]]:
    """Hold the lock `upgrade` takes, from outside; yields a count of who queues behind it."""
    if backend.is_pg:
        dbname = url.rsplit("/", 1)[1]

        with pg_admin(dbname, autocommit=False) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            try:
                yield lambda: _advisory_waiters(dbname)
            finally:
                holder.rollback()
        return

    with open(f"{make_url(url).database}.migrate-lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        inode = str(os.fstat(fh.fileno()).st_ino)

        def flock_waiting() -> int:
            # Blocked requests are the "->" lines of /proc/locks, with MAJ:MIN:INODE.
            lines = Path("/proc/locks").read_text().splitlines()
            return sum(1 for ln in lines if "->" in ln and ln.split()[6].rsplit(":", 1)[1] == inode)

        yield flock_waiting  # closing the file releases the flock


_STARTUP_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    import claude_proxy.http.runner  # everything `serve` imports
    from claude_proxy.app import ProxyApp
    from claude_proxy.settings import Settings
    from claude_proxy.telemetry.logs import setup_logging
    from claude_proxy.store.migrate import database_revision

    async def main():
        setup_logging()  # as wiring.run_worker does
        app = ProxyApp(Settings())
        await app.startup()
        try:
            migrator = app.components.migrator
            await asyncio.wait_for(asyncio.shield(migrator), 60)
            revision = database_revision(app.components.engine)
        finally:
            await app.shutdown()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako"))
        print("RESULT " + json.dumps({"revision": revision, "loaded": loaded}), flush=True)

    asyncio.run(main())
    """
)


def test_server_startup_never_imports_alembic(backend: Backend, tmp_path: Path) -> None:
    """A fresh database is migrated at startup (by the child), and a migrated one is
    left alone; either way the worker process itself never loads Alembic or Mako.
    In a fresh interpreter: this test process imported Alembic long ago."""
    env = {
        **os.environ,
        "DATABASE_URL": backend.new_database_url(),
        "CLAUDE_PROXY_API_KEYS": "sk-test-xxxxxxxxxxxxxxxx",
        "ANTHROPIC_API_KEY": "x",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "CLAUDE_PROXY_SPILL_DIR": str(tmp_path / "spill"),
        "CLAUDE_PROXY_LOG_REQUESTS": "false",
        "CLAUDE_PROXY_PRE_STOP_SECONDS": "0",
        "CLAUDE_PROXY_LOG_FORMAT": "json",
    }
    for start in ("fresh", "migrated"):
        proc = subprocess.run(
            [sys.executable, "-c", _STARTUP_SCRIPT],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        result = json.loads(next(ln for ln in lines if ln.startswith("RESULT ")).split(" ", 1)[1])
        assert result == {"revision": HEAD_REVISION, "loaded": []}, start
        migrated = [ln for ln in lines if "database migrated from None to" in ln]
        assert len(migrated) == (1 if start == "fresh" else 0), proc.stdout
        assert any("database schema is up to date" in ln for ln in lines), proc.stdout


def _advisory_waiters(dbname: str) -> int:
    """Sessions of `dbname` queued on an advisory lock (the migration lock)."""
    with pg_admin(dbname) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
            (dbname,),
        ).fetchone()
        assert row is not None
        return int(row[0])
