"""Real PostgreSQL and pgbouncer for tests: fresh databases and a transaction-mode pooler.

PostgreSQL comes from CLAUDE_PROXY_TEST_PG_URL (default: the local cluster, trust
auth). If PostgreSQL or pgbouncer is missing, tests fail and say how to fix it:
they are never skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_proxy.store.engine import redacted_url

PG_URL = os.environ.get("CLAUDE_PROXY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
PG_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or point CLAUDE_PROXY_TEST_PG_URL at a PostgreSQL you may create databases on)"
)
WAIT = 15.0  # upper bound for anything the tests wait for; they return as soon as it holds


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
