"""Store fixtures: every test runs on SQLite, real PostgreSQL, and PostgreSQL behind pgbouncer.

PostgreSQL comes from CLAUDE_PROXY_TEST_PG_URL (default: the local cluster,
trust auth). Each test module gets a fresh database, dropped afterwards. The
pgbouncer backend starts a real `pgbouncer` (Debian package) in transaction
mode on a free loopback port in front of that PostgreSQL. If either is
missing the tests fail and say how to fix it: they are never skipped.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from claude_proxy.store.engine import database_target, make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.records import RequestRecord, Usage
from claude_proxy.store.schema import request_logs
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_db import WriterDatabase
from tests.helpers import log_ids
from tests.pg import (
    PgBouncer,
    create_database,
    drop_database,
    free_port,
    pg_admin,
    pg_url,
)

BACKENDS = ["sqlite", "postgres", "pgbouncer"]


# ------------------------------------------------------------------ helpers


def make_record(i: int, **overrides: Any) -> RequestRecord:
    """A plausible finished record with a unique, time-ordered id."""
    fields: dict[str, Any] = {
        "id": f"cpr_test_{i:08d}_{uuid.uuid4().hex[:8]}",
        "created_at": time.time(),
        "method": "POST",
        "endpoint": "/v1/messages",
        "key_id": f"key-{i % 3}",
        "model": "claude-sonnet-4-5",
        "stream": i % 2 == 0,
        "status_code": 200,
        "stop_reason": "end_turn",
        "message_id": f"msg_{i}",
        "usage": Usage(
            input_tokens=100 + i,
            output_tokens=10 + i,
            cache_creation_input_tokens=5,
            cache_creation_5m_input_tokens=3,
            cache_creation_1h_input_tokens=2,
            cache_read_input_tokens=7,
        ),
        "latency_ms": 100.0 + i,
        "ttft_ms": 10.0 + i,
        "upstream_request_id": f"req_{i}",
        "upstream_attempts": 1,
        "client_ip": "10.0.0.1",
        "user_agent": "test-agent/1.0",
    }
    fields.update(overrides)
    return RequestRecord(**fields)


# ------------------------------------------------------------------ backends


@dataclass
class Backend:
    """One database to test against, with ways to take it down and bring it back."""

    name: str
    url: str
    workdir: Path
    dbname: str | None = None
    bouncer: PgBouncer | None = None
    engines: list[Engine] = field(default_factory=list)
    extra_databases: list[str] = field(default_factory=list)

    @property
    def is_pg(self) -> bool:
        return self.name != "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    def engine(self, url: str | None = None, **kwargs: Any) -> Engine:
        kwargs.setdefault("pool_size", 2)
        kwargs.setdefault("max_overflow", 2)
        kwargs.setdefault("connect_timeout", 2)
        kwargs.setdefault("sqlite_busy_timeout_ms", 200)
        engine = make_engine(url or self.url, **kwargs)
        self.engines.append(engine)
        return engine

    def writer_db(self, **kwargs: Any) -> WriterDatabase:
        """The log writer's connection to this database (the same settings as engine())."""
        kwargs.setdefault("connect_timeout", 2)
        kwargs.setdefault("sqlite_busy_timeout_ms", 200)
        return WriterDatabase(database_target(self.url, **kwargs))

    def new_database_url(self) -> str:
        """An empty database of the same kind (unmigrated)."""
        if not self.is_pg:
            return f"sqlite:///{self.workdir / f'fresh-{uuid.uuid4().hex[:8]}.db'}"
        name = create_database()
        self.extra_databases.append(name)
        return pg_url(name, self.bouncer.port if self.bouncer else None)

    def count(self, engine: Engine | None = None) -> int:
        eng = engine or self.engine()
        with eng.connect() as conn:
            n: int = conn.execute(select(func.count()).select_from(request_logs)).scalar_one()
            return n

    def ids(self) -> list[str]:
        return log_ids(self.engine())

    def reset(self) -> None:
        with self.engine().begin() as conn:
            conn.execute(request_logs.delete())

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The database is unreachable (pgbouncer stopped, connections refused, file locked)."""
        if self.name == "pgbouncer":
            assert self.bouncer is not None
            self.bouncer.stop()
            try:
                yield
            finally:
                self.bouncer.start()
        elif self.name == "postgres":
            with pg_admin() as admin:
                admin.execute(f'ALTER DATABASE "{self.dbname}" WITH ALLOW_CONNECTIONS false')
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.dbname,),
                )
                try:
                    yield
                finally:
                    admin.execute(f'ALTER DATABASE "{self.dbname}" WITH ALLOW_CONNECTIONS true')
        else:
            with self._sqlite_write_lock():
                yield

    @contextmanager
    def stuck(self) -> Iterator[None]:
        """The database answers but every insert waits (a table lock held elsewhere)."""
        if self.is_pg:
            with pg_admin(self.dbname, autocommit=False) as conn:
                conn.execute("LOCK TABLE request_logs IN ACCESS EXCLUSIVE MODE")
                try:
                    yield
                finally:
                    conn.rollback()
        else:
            with self._sqlite_write_lock():
                yield

    @contextmanager
    def _sqlite_write_lock(self) -> Iterator[None]:
        conn = sqlite3.connect(self.sqlite_path, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            conn.rollback()
            conn.close()

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        self.engines.clear()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A fresh database for this test module, migrated, of the parametrized kind."""
    kind: str = request.param
    workdir = Path(tempfile.mkdtemp(prefix=f"claude-proxy-store-{kind}-"))
    b = Backend(kind, f"sqlite:///{workdir / 'store.db'}", workdir)
    try:
        if kind != "sqlite":
            b.dbname = create_database()
            if kind == "pgbouncer":
                b.bouncer = PgBouncer(workdir, free_port())
                b.bouncer.start()
            b.url = pg_url(b.dbname, b.bouncer.port if b.bouncer else None)
        upgrade(b.engine())
        yield b
    finally:
        b.close()
        if b.bouncer is not None:
            b.bouncer.stop()
        for name in [b.dbname, *b.extra_databases]:
            if name:
                drop_database(name)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def db(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """The module's backend with an empty request_logs table."""
    backend.reset()
    yield backend
    backend.close()


@pytest.fixture
def writers() -> Iterator[list[LogWriter]]:
    """Writers a test made; closed at the end even if the test failed."""
    made: list[LogWriter] = []
    yield made
    for w in made:
        if w._thread is not None and not w._closed:
            w.close_sync(2)


@pytest.fixture
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


def execute(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(text(sql), params))
