"""How batches reach PostgreSQL: COPY for new rows, the idempotent INSERT when COPY cannot.

Batches holding rows already in the table (replays, resends) are covered on every backend
by test_writer.py and test_spend.py; here is what only PostgreSQL has.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from claude_proxy.store.columns import COPY_TYPES, ROW_COLUMNS
from claude_proxy.store.engine import database_target, make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_db import WriterDatabase
from tests.pg import create_database, drop_database, pg_admin, pg_url
from tests.store.conftest import make_record
from tests.store.test_writer import FAST

PRICE = Decimal("0.01250000")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A migrated PostgreSQL database of this module's own."""
    name = create_database()
    engine = make_engine(pg_url(name))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    yield name
    drop_database(name)


def test_copy_types_are_the_tables_column_types(database: str) -> None:
    with pg_admin(database) as conn:
        table = dict(
            conn.execute(
                "SELECT attname, atttypid::int FROM pg_attribute "
                "WHERE attrelid = 'request_logs'::regclass AND attnum > 0"
            ).fetchall()
        )
    ours = {
        name: psycopg.adapters.types[t].oid for name, t in zip(ROW_COLUMNS, COPY_TYPES, strict=True)
    }
    assert ours == {name: table[name] for name in ROW_COLUMNS}


@pytest.fixture
def rls_role(database: str) -> Iterator[str]:
    """A login role of the kind Supabase apps use, on a request_logs with row-level
    security enabled (as Supabase recommends for every table): PostgreSQL then refuses
    COPY FROM into it ("not supported with row-level security"), and INSERT still works."""
    role = f"claude_proxy_rls_{uuid.uuid4().hex[:8]}"
    with pg_admin(database) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE ON request_logs, key_spend TO "{role}"')
        conn.execute("ALTER TABLE request_logs ENABLE ROW LEVEL SECURITY")
        conn.execute(
            f'CREATE POLICY "{role}_all" ON request_logs TO "{role}" USING (true) WITH CHECK (true)'
        )
    yield role
    with pg_admin(database) as conn:
        conn.execute(f'DROP POLICY "{role}_all" ON request_logs')
        conn.execute("ALTER TABLE request_logs DISABLE ROW LEVEL SECURITY")
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def test_copy_refused_by_row_level_security_falls_back_to_insert(
    database: str,
    rls_role: str,
    tmp_path: Path,
    writers: list[LogWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = pg_url(database).replace("postgres@", f"{rls_role}@", 1)
    assert f"{rls_role}@" in url
    key = f"key_{uuid.uuid4().hex[:8]}"
    writer = LogWriter(
        WriterDatabase(database_target(url, connect_timeout=2)),
        tmp_path / "spill",
        cost_fn=lambda r: PRICE,
        batch_size=5,
        **FAST,
    )
    writers.append(writer)
    caplog.set_level(logging.WARNING, logger="claude_proxy.store")
    writer.start()
    for i in range(12):  # three batches: the first finds COPY refused
        writer.submit(make_record(i, key_id=key))
    writer.close_sync(10)
    stats = writer.stats()
    assert (stats["written"], stats["spilled"], stats["failed_batches"]) == (12, 0, 0)
    refused = [r for r in caplog.records if "COPY into request_logs failed" in r.getMessage()]
    assert len(refused) == 1, "one warning, then INSERT without trying COPY again"
    assert "row-level security" in refused[0].getMessage()
    with pg_admin(database) as conn:
        spend = conn.execute(
            "SELECT cost_usd, requests FROM key_spend WHERE key_id = %s AND period = 'total'",
            (key,),
        ).fetchone()
    assert spend == (PRICE * 12, 12)
