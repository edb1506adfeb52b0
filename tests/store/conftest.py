"""Store fixtures: every test runs on SQLite, real PostgreSQL, and PostgreSQL behind pgbouncer.

PostgreSQL comes from CLAUDE_PROXY_TEST_PG_URL (default: the local cluster,
trust auth). Each test module gets a fresh database, dropped afterwards. The
pgbouncer backend starts a real `pgbouncer` (Debian package) in transaction
mode on a free loopback port in front of that PostgreSQL. If either is
missing the tests fail and say how to fix it: they are never skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, func, select, text

from claude_proxy.records import RequestRecord
from claude_proxy.sse import Usage
from claude_proxy.store.engine import make_engine, redacted_url
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.schema import request_logs

PG_URL = os.environ.get("CLAUDE_PROXY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or point CLAUDE_PROXY_TEST_PG_URL at a PostgreSQL you may create databases on)"
)
BACKENDS = ["sqlite", "postgres", "pgbouncer"]
WAIT = 15.0  # upper bound for anything the tests wait for; they return as soon as it holds


# ------------------------------------------------------------------ helpers


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Poll `predicate` until it holds; fail after `timeout`. Returns as soon as it holds."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)  # poll interval, not a wait for the condition itself
        delay = min(delay * 2, 0.05)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------- PostgreSQL


def pg_admin(dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A direct connection to the test cluster; fails the test with a hint if it is down."""
    conninfo = PG_URL.replace("postgres://", "postgresql://", 1)
    kwargs: dict[str, Any] = {"autocommit": autocommit, "connect_timeout": 3}
    if dbname is not None:
        kwargs["dbname"] = dbname
    try:
        return psycopg.connect(conninfo, **kwargs)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {redacted_url(PG_URL)}: {exc}\n{PG_HINT}",
            pytrace=False,
        )


def create_database() -> str:
    name = f"claude_proxy_test_{uuid.uuid4().hex[:12]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(dbname: str, port: int | None = None) -> str:
    from sqlalchemy import make_url

    url = make_url(PG_URL.replace("postgres://", "postgresql://", 1)).set(database=dbname)
    if port is not None:
        url = url.set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False)


# ----------------------------------------------------------------- pgbouncer


@dataclass
class PgBouncer:
    """A real pgbouncer in transaction mode in front of the test PostgreSQL."""

    workdir: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @staticmethod
    def binary() -> str:
        path = shutil.which("pgbouncer") or (
            "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
        )
        if path is None:
            pytest.fail(
                "pgbouncer is not installed: apt-get install -y pgbouncer "
                "(the store tests run PostgreSQL through it in transaction mode)",
                pytrace=False,
            )
        return path

    def write_config(self) -> Path:
        from sqlalchemy import make_url

        upstream = make_url(PG_URL.replace("postgres://", "postgresql://", 1))
        user = upstream.username or "postgres"
        host = upstream.host or "127.0.0.1"
        users = self.workdir / "userlist.txt"
        users.write_text(f'"{user}" ""\n')
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            # The fallback entry: any database name goes to the same-named database.
            f"* = host={host} port={upstream.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 500\n"
            "default_pool_size = 20\n"
            "server_login_retry = 1\n"
        )
        for p in (self.workdir, users, ini):
            p.chmod(0o755 if p.is_dir() else 0o644)  # readable by the user it switches to
        return ini

    def start(self) -> None:
        args = [self.binary()]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root; -u makes it switch user itself.
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' user for pgbouncer")
            args += ["-u", "postgres"]
        args.append(str(self.write_config()))
        self.lines = []
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        self._wait_line(f"listening on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown, clients are cut off
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed at EOF, when pgbouncer exits
            for line in proc.stdout:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_line(self, needle: str) -> None:
        deadline = time.monotonic() + WAIT
        with self._cond:
            while not any(needle in line for line in self.lines):
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail("pgbouncer exited:\n" + "".join(self.lines), pytrace=False)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail("pgbouncer did not start:\n" + "".join(self.lines))
                self._cond.wait(min(remaining, 0.2))


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
        with self.engine().connect() as conn:
            return list(conn.execute(select(request_logs.c.id)).scalars())

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
def spill_dir(tmp_path: Path) -> Path:
    return tmp_path / "spill"


def spill_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("spill-*.jsonl"))


def execute(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(text(sql), params))
