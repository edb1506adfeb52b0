"""Migrations: idempotent, equal to the schema the code binds to, and safe from many replicas."""

from __future__ import annotations

import logging
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from claude_proxy.store.migrate import MIGRATION_LOCK_ID, current_revision, head_revision, upgrade
from claude_proxy.store.schema import metadata
from tests.store.conftest import Backend, pg_admin, wait_until

COLUMNS = {
    "id", "created_at", "key_id", "endpoint", "method", "model", "stream", "status_code",
    "error_type", "error_message", "stop_reason", "message_id", "input_tokens", "output_tokens",
    "cache_creation_input_tokens", "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens", "cache_read_input_tokens", "cost_usd", "latency_ms",
    "ttft_ms", "upstream_request_id", "client_disconnected", "upstream_attempts", "client_ip",
    "user_agent", "anthropic_beta", "metadata_user_id", "claude_code_session_id",
    "refusal", "request_body", "response_body", "logged_at",
}  # fmt: skip


def test_upgrade_twice_is_idempotent_and_matches_the_schema(backend: Backend) -> None:
    engine = backend.engine(backend.new_database_url())
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0002"

    insp = inspect(engine)
    assert {c["name"] for c in insp.get_columns("request_logs")} == COLUMNS
    assert insp.get_pk_constraint("request_logs")["constrained_columns"] == ["id"]
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("request_logs")}
    assert indexes == {
        "ix_request_logs_created_at": ["created_at"],
        "ix_request_logs_key_id_created_at": ["key_id", "created_at"],
        "ix_request_logs_model_created_at": ["model", "created_at"],
        "ix_request_logs_logged_at": ["logged_at"],
    }
    assert {"api_keys", "key_spend", "rate_usage", "proxy_instances"} <= set(insp.get_table_names())
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

        def waiting() -> int:
            with pg_admin(dbname) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
                    (dbname,),
                ).fetchone()
                assert row is not None
                return int(row[0])

        wait_until(lambda: waiting() == 2, what="both replicas waiting on the migration lock")
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
