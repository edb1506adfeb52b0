"""Helpers the tests share: waiting for a condition, the request log's rows, database keys
and spend, spill files, and the CLI. Plain functions, no fixtures (those are in the conftest files).

Waiting is on an event wherever there is one (a line a process prints, a future, the
emulator's /_emulator/wait). `wait_until` is for what cannot notify anybody, such as a
database or a file: it re-checks often and returns the moment the condition holds, so its
timeout is an upper bound, never a pace.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Engine

# tests/conftest.py imports this module, so every test does, tests/deploy included: the
# package itself is imported only by the helpers that use it.

T = TypeVar("T")

WAIT = 15.0  # upper bound for anything the tests wait for; they return as soon as it holds
_FIRST_POLL = 0.002  # the first re-check comes this soon, then less often...
_MAX_POLL = 0.05  # ... up to this (a poll interval, not a wait for the condition itself)
_SHOWN_CHARS = 500  # of the last value seen, in the failure message

# Every secret the suite uses: at the end of the session no server's output may contain
# any of them (tests/conftest.py: `no_secret_in_any_server_output`).
SECRETS: set[str] = set()


# ---------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], T], *, timeout: float = WAIT, what: str = "") -> T:
    """Re-check `predicate` until it returns something truthy, and return that.

    Fails after `timeout` seconds with an AssertionError naming `what` and the last value
    the predicate returned."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout, what, value))
        time.sleep(delay)
        delay = min(delay * 2, _MAX_POLL)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], *, timeout: float = WAIT, what: str = ""
) -> T:
    """`wait_until` for a test on the event loop: the loop runs between the checks.
    `predicate` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout, what, value))
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_POLL)


def _timed_out(predicate: object, timeout: float, what: str, value: object) -> str:
    shown = repr(value)
    if len(shown) > _SHOWN_CHARS:
        shown = shown[:_SHOWN_CHARS] + "..."
    name = what or getattr(predicate, "__qualname__", repr(predicate))
    return f"timed out after {timeout:g}s waiting for {name}; last value: {shown}"


# ------------------------------------------------------------------ the request log


@contextmanager
def database(url: str) -> Iterator[Engine]:
    """An engine of the test's own on `url` (a proxy's DATABASE_URL), disposed after."""
    from claude_proxy.store.engine import make_engine

    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def log_rows(engine: Engine, *, order_by: str | None = None, **where: Any) -> list[dict[str, Any]]:
    """The request_logs rows whose columns equal `where` (all of them without), as dicts."""
    from sqlalchemy import select

    from claude_proxy.store.schema import request_logs

    stmt = select(request_logs)
    for column, value in where.items():
        stmt = stmt.where(request_logs.c[column] == value)
    if order_by is not None:
        stmt = stmt.order_by(request_logs.c[order_by])
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def log_ids(engine: Engine) -> list[str]:
    """The ids of every request_logs row (a request id twice means a request has two rows)."""
    from sqlalchemy import select

    from claude_proxy.store.schema import request_logs

    with engine.connect() as conn:
        return list(conn.execute(select(request_logs.c.id)).scalars())


def wait_for_rows(engine: Engine, *, timeout: float = WAIT, **where: Any) -> list[dict[str, Any]]:
    """The rows matching `where`, once there is at least one (the database cannot notify:
    a record reaches it through the writer process, a little after the response)."""
    shown = ", ".join(f"{column} = {value}" for column, value in where.items())
    return wait_until(
        lambda: log_rows(engine, **where), timeout=timeout, what=f"a request_logs row with {shown}"
    )


def log_row(engine: Engine, request_id: str, *, timeout: float = WAIT) -> dict[str, Any]:
    """The one row of the request `request_id` (its x-claude-proxy-request-id), once written."""
    rows = wait_for_rows(engine, timeout=timeout, id=request_id)
    assert len(rows) == 1, f"request {request_id} has {len(rows)} rows: {rows}"
    return rows[0]


# ------------------------------------------------------------------------------- keys


def register_secret(secret: str) -> str:
    """Note a key the tests made or sent, so the end-of-session scan looks for it."""
    SECRETS.add(secret)
    return secret


def make_key(
    engine: Engine,
    name: str = "test",
    *,
    user_id: str | None = None,
    group_id: str | None = None,
    **spec: Any,
) -> tuple[str, str]:
    """A database key, as `claude-proxy keys create` makes one (`spec`: KeySpec's fields such
    as models, rpm, tpm, budget_usd, expires_at; the owner a user or a group id): its id and
    its secret, which is registered for the leak scan."""
    from claude_proxy.store.keys import KeySpec, create_key

    row, secret = create_key(
        engine, KeySpec(name=name, **spec), actor="test", user_id=user_id, group_id=group_id
    )
    return row.id, register_secret(secret)


def add_spend(engine: Engine, level_id: str, period: str, usd: str) -> None:
    """`usd` spent by a level (a key, user or group id, or "org") in the current `period`
    (day, week, month or total): one request's row, as the proxy counts it."""
    from decimal import Decimal

    from sqlalchemy import insert

    from claude_proxy.store.columns import current_period
    from claude_proxy.store.schema import key_spend

    with engine.begin() as conn:
        conn.execute(
            insert(key_spend).values(
                key_id=level_id, period=current_period(period), cost_usd=Decimal(usd), requests=1
            )
        )


# -------------------------------------------------------------------------- spill files


def spill_files(directory: Path) -> list[Path]:
    """The spill files in `directory` (none if it does not exist), by name."""
    return sorted(directory.glob("spill-*.jsonl")) if directory.exists() else []


def spill_lines(directory: Path) -> int:
    """How many records wait in the spill files of `directory`."""
    return sum(len(p.read_bytes().splitlines()) for p in spill_files(directory))


# -------------------------------------------------------------------------------- the CLI


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without the developer's ANTHROPIC_*, CLAUDE_PROXY_* and DATABASE_URL
    (a command must see only what the test gives it), plus `env`."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_PROXY_", "DATABASE_URL"))
    }
    return {**clean, **(env or {})}


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> str:
    """`python -m claude_proxy ARGS` run to its end (in `cwd`, default a fresh temp dir, so
    that no default SQLite file or spill dir lands in the repository); fails unless it exits
    0. Returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "claude_proxy", *args],
        env=cli_env(env),
        cwd=cwd or tempfile.mkdtemp(prefix="claude-proxy-cli-"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"claude-proxy {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout
