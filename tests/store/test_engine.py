"""DATABASE_URL as users paste it, and what the engine does with it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from claude_proxy.store.engine import backend, make_engine, normalize_url, redacted_url
from tests.store.conftest import Backend


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgres://u:p@db.example.com:6543/postgres", "postgresql+psycopg"),
        ("postgresql://u:p@db.example.com:5432/postgres", "postgresql+psycopg"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg"),
        ("sqlite:///claude-proxy.db", "sqlite+pysqlite"),
        ("sqlite:////var/lib/claude-proxy/logs.db", "sqlite+pysqlite"),
    ],
)
def test_urls_are_accepted_as_written(given: str, driver: str) -> None:
    url = normalize_url(given)
    assert url.drivername == driver
    assert backend(given) == driver.split("+")[0]


def test_supabase_pooler_url_keeps_its_parts_and_drops_foreign_params() -> None:
    given = (
        "postgresql://postgres.abcdefgh:s3cr%40t@aws-0-eu-west-1.pooler.supabase.com:6543/"
        "postgres?sslmode=require&pgbouncer=true"
    )
    url = normalize_url(given)
    assert (url.host, url.port, url.username, url.password, url.database) == (
        "aws-0-eu-west-1.pooler.supabase.com",
        6543,
        "postgres.abcdefgh",
        "s3cr@t",
        "postgres",
    )
    assert dict(url.query) == {"sslmode": "require"}


def test_unknown_database_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        normalize_url("mysql://u:p@h/db")


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://user:hunter2-secret@host:6543/db",
        "postgres://user:hunter2-secret@host/db",
        "postgresql://user:hunter2-secret@host:notaport/db",
    ],
)
def test_redacted_url_never_shows_the_password(given: str) -> None:
    shown = redacted_url(given)
    assert "hunter2-secret" not in shown
    assert "user:***@host" in shown


def test_engine_repr_and_str_hide_the_password() -> None:
    engine = make_engine("postgresql://user:hunter2-secret@127.0.0.1:1/db", pool_size=1)
    assert "hunter2-secret" not in repr(engine)
    assert "hunter2-secret" not in redacted_url(engine.url)


def test_connections_never_prepare_server_side(db: Backend) -> None:
    engine = db.engine()
    with engine.connect() as conn:
        if db.is_pg:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            assert getattr(raw, "prepare_threshold", "missing") is None
        else:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 200


def test_repeated_statements_work_through_a_transaction_pooler(db: Backend) -> None:
    # psycopg prepares a statement after 5 runs by default, naming it _pg3_0, _pg3_1...
    # per client connection. Behind pgbouncer in transaction mode the next transaction
    # may land on a server connection where that name is missing or holds another
    # client's statement ("prepared statement "_pg3_0" already exists"). Each thread
    # runs its own statements over many transactions: all must succeed. (With
    # psycopg's default threshold this fails within a few runs.)
    engine = db.engine(pool_size=4, max_overflow=0)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for rounds in range(2):
                for i in range(20):
                    with engine.begin() as conn:
                        sql = f"SELECT CAST(:x AS INTEGER) + {n} - {n} + {rounds}"
                        assert conn.execute(text(sql), {"x": i}).scalar() == i + rounds
                        count = f"SELECT count(*) + {n} FROM request_logs WHERE id = :id"
                        assert conn.execute(text(count), {"id": "x"}).scalar() == n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sqlite_file_in_a_missing_directory_is_created(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'nested' / 'proxy.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()
    assert (tmp_path / "data" / "nested" / "proxy.db").exists()
