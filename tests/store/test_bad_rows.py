"""One bad row never holds back the request log.

A row the database refuses for its own content (SQLSTATE classes 21, 22, 23, 54; SQLite's
constraint, "too big" and binding errors) is split out of its batch, stored in its reduced
form (its spend still counts), or quarantined if even that is refused; the database is
never marked unhealthy for it. Connection and server failures (08, 25, 57, ...) stay
outages: the batch is spilled and replayed, nothing is quarantined. Every database here is
real: the refusals are PostgreSQL's and SQLite's own.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import errors as pg_errors
from sqlalchemy import select, text

from claude_proxy.store.engine import database_target, make_engine
from claude_proxy.store.migrate import upgrade
from claude_proxy.store.records import (
    MAX_MODEL_CHARS,
    MAX_SHORT_TEXT_CHARS,
    RequestRecord,
    bounded,
)
from claude_proxy.store.rows import dump_row, record_to_row
from claude_proxy.store.schema import request_logs
from claude_proxy.store.writer import LogWriter
from claude_proxy.store.writer_db import DatabaseTarget, Fault, WriterDatabase
from claude_proxy.telemetry.access_log import log_access
from tests.helpers import run_cli, spill_files, wait_until
from tests.pg import drop_database, pg_admin, pg_url
from tests.store.conftest import Backend, execute, make_record
from tests.store.test_spend import spend_of
from tests.store.test_writer import FAST, wait_stats

PRICE = Decimal("0.01250000")
# The report: a /v1/messages request whose model is 3,200 characters of random hex.
HEX_MODEL = secrets.token_hex(1600)

on_postgres = pytest.mark.parametrize("backend", ["postgres"], indirect=True)
on_sqlite = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


class RecordingDatabase(WriterDatabase):
    """The writer's real connection, noting how each failure it met was classified."""

    def __init__(self, target: DatabaseTarget, setup: Callable[[Any], None] | None = None):
        super().__init__(target)
        self.seen: list[tuple[str | None, str, Fault]] = []
        self._setup = setup

    def fault(self, exc: BaseException) -> Fault:
        verdict = super().fault(exc)
        self.seen.append((getattr(exc, "sqlstate", None), type(exc).__name__, verdict))
        return verdict

    def _connect_sqlite(self) -> sqlite3.Connection:
        conn = super()._connect_sqlite()
        if self._setup is not None:
            self._setup(conn)
        return conn


def recording_db(db: Backend, **kwargs: Any) -> RecordingDatabase:
    kwargs.setdefault("connect_timeout", 2)
    kwargs.setdefault("sqlite_busy_timeout_ms", 200)
    setup = kwargs.pop("setup", None)
    return RecordingDatabase(database_target(db.url, **kwargs), setup)


def start_writer(
    writers: list[LogWriter], wdb: WriterDatabase, spill_dir: Path, **kwargs: Any
) -> LogWriter:
    w = LogWriter(wdb, spill_dir, cost_fn=lambda r: PRICE, **{**FAST, **kwargs})
    writers.append(w)
    return w


def row_of(db: Backend, request_id: str) -> dict[str, Any]:
    with db.engine().connect() as conn:
        row = conn.execute(select(request_logs).where(request_logs.c.id == request_id)).one()
    return dict(row._mapping)


def quarantine_files(d: Path) -> list[Path]:
    return sorted(d.glob("quarantine-*.jsonl")) if d.exists() else []


def new_key(name: str) -> str:
    return f"key_{name}_{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------- the report, end to end


@pytest.mark.parametrize("backend", ["postgres", "pgbouncer"], indirect=True)
def test_one_oversized_model_does_not_hold_back_its_batch(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """A 3,200-character model used to fail its whole batch with 54000 (index row too big),
    spill it, mark the database unhealthy and fail every replay: the other clients' rows
    never landed and no spend reached key_spend. Now the model is capped in the writer
    (the record arrives uncapped), every row lands in one batch, and spend counts."""
    bad = make_record(0, key_id=new_key("bad"), model=HEX_MODEL)
    good = [make_record(i, key_id=new_key(f"good{i}")) for i in range(1, 7)]
    w = start_writer(writers, db.writer_db(), spill_dir)
    for r in [*good[:3], bad, *good[3:]]:  # all queued before the thread starts: one batch
        w.submit(r)
    w.start()
    stats = wait_stats(w, "7 written", lambda s: s["written"] == 7)
    assert stats["batches"] == 1 and stats["failed_batches"] == 0 and stats["healthy"]
    assert stats["spilled"] == 0 and stats["quarantined"] == 0
    assert set(db.ids()) == {r.id for r in [bad, *good]}
    stored = row_of(db, bad.id)["model"]
    assert stored == bounded(HEX_MODEL, MAX_MODEL_CHARS) and len(stored) == MAX_MODEL_CHARS
    assert stored.startswith(HEX_MODEL[:200])
    for r in [bad, *good]:
        assert spend_of(db, r.key_id or "")["total"] == (PRICE, 1)
    w.close_sync(5)
    assert spill_files(spill_dir) == [] and quarantine_files(spill_dir) == []


@on_postgres
def test_a_spill_file_written_before_the_caps_replays(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """A spill file the old writer left (full-length model and user agent) used to fail
    its replay forever; read back, its rows are capped like new ones and all land."""
    key = new_key("old")
    recs = [make_record(i, key_id=key) for i in range(5)]
    rows = [record_to_row(r, PRICE) for r in recs]
    rows[2]["model"] = HEX_MODEL  # as the old code wrote it: uncapped
    rows[2]["user_agent"] = "x" * 20_000
    spill_dir.mkdir(parents=True)
    path = spill_dir / "spill-1-old-1.jsonl"
    path.write_bytes(b"".join(dump_row(r) for r in rows))
    w = start_writer(writers, db.writer_db(), spill_dir)
    w.start()
    stats = wait_stats(w, "file replayed", lambda s: s["replayed_files"] == 1)
    assert stats["replayed"] == 5 and stats["failed_batches"] == 0 and stats["healthy"]
    assert set(db.ids()) == {r.id for r in recs}
    assert row_of(db, recs[2].id)["model"] == bounded(HEX_MODEL, MAX_MODEL_CHARS)
    assert spend_of(db, key)["total"] == (PRICE * 5, 5)
    assert not path.exists() and quarantine_files(spill_dir) == []


# ------------------------------------------------------- bad rows, class by class


@on_postgres
def test_a_row_refused_even_reduced_is_quarantined_and_listed(
    db: Backend,
    spill_dir: Path,
    writers: list[LogWriter],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """54000 on a column the reduced form keeps (key_id is the proxy's, never capped: a
    damaged record): the row goes to a quarantine-<host>-<pid>-<random>.jsonl file (0600),
    the rest of its batch lands, the database stays healthy, and `claude-proxy logs
    quarantine` lists it."""
    caplog.set_level(logging.INFO, logger="claude_proxy.store")
    bad = make_record(0, key_id="key_" + secrets.token_hex(1600), user_agent="secret-agent/9")
    good = [make_record(i, key_id=new_key(f"g{i}")) for i in range(1, 4)]
    wdb = recording_db(db)
    w = start_writer(writers, wdb, spill_dir)
    for r in [good[0], bad, *good[1:]]:
        w.submit(r)
    w.start()
    stats = wait_stats(
        w, "3 written, 1 quarantined", lambda s: s["quarantined"] == 1 and s["written"] == 3
    )
    assert stats["reduced"] == 0
    assert stats["failed_batches"] == 0 and stats["spilled"] == 0 and stats["healthy"]
    assert set(db.ids()) == {r.id for r in good}
    assert ("54000", "ProgramLimitExceeded", "row") in wdb.seen
    (qfile,) = quarantine_files(spill_dir)
    assert stat.S_IMODE(qfile.stat().st_mode) == 0o600
    assert bad.id in qfile.read_text()
    # The log says which record and why, but no row values (PostgreSQL's DETAIL holds them).
    (line,) = [r.getMessage() for r in caplog.records if "quarantined in" in r.getMessage()]
    assert bad.id in line and "[54000]" in line
    assert "secret-agent" not in line and "10.0.0.1" not in line
    assert bad.key_id is not None and bad.key_id not in line
    w.close_sync(5)
    assert spill_files(spill_dir) == []

    def cli(*args: str) -> str:
        env = {"CLAUDE_PROXY_SPILL_DIR": str(spill_dir)}
        return run_cli("logs", "quarantine", *args, env=env, cwd=tmp_path)

    (listed,) = orjson.loads(cli("--json"))
    assert listed["id"] == bad.id and listed["file"] == qfile.name
    assert listed["key_id"] == bounded(bad.key_id, MAX_SHORT_TEXT_CHARS)
    assert "[54000]" in listed["reason"] and listed["created_at"] and listed["quarantined_at"]
    table = cli()
    assert bad.id in table and qfile.name in table and "secret-agent" not in table


@pytest.fixture(scope="module")
def latin1_database() -> Iterator[str]:
    """A migrated PostgreSQL database in LATIN1, as older installations have them."""
    name = f"claude_proxy_test_latin1_{uuid.uuid4().hex[:8]}"
    with pg_admin() as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    engine = make_engine(pg_url(name))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    yield name
    drop_database(name)


def test_a_value_the_database_encoding_cannot_hold_is_stored_reduced(
    latin1_database: str, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """Class 22 (22P05 untranslatable character): a user agent with a snowman in a LATIN1
    database. It used to fail as a client-side encoding error, taken for an outage, spilled
    and retried forever; now the row is stored reduced (client texts NULL) and its spend
    counts, while a LATIN1-representable agent lands whole."""
    url = pg_url(latin1_database)
    key = new_key("latin")
    bad = make_record(0, key_id=key, user_agent="agent \u2603", metadata_user_id="u\U0001f600")
    fine = [make_record(i, key_id=key, user_agent="agent \u00e9") for i in range(1, 4)]
    wdb = RecordingDatabase(database_target(url, connect_timeout=2))
    w = start_writer(writers, wdb, spill_dir)
    for r in [fine[0], bad, *fine[1:]]:
        w.submit(r)
    w.start()
    stats = wait_stats(w, "4 written", lambda s: s["written"] == 4 and s["reduced"] == 1)
    assert stats["failed_batches"] == 0 and stats["healthy"] and stats["quarantined"] == 0
    assert ("22P05", "UntranslatableCharacter", "row") in wdb.seen
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = {
                r.id: r
                for r in conn.execute(
                    select(
                        request_logs.c.id,
                        request_logs.c.user_agent,
                        request_logs.c.metadata_user_id,
                        request_logs.c.model,
                        request_logs.c.input_tokens,
                    )
                )
            }
            total = conn.execute(
                text(
                    "SELECT cost_usd, requests FROM key_spend "
                    "WHERE key_id = :k AND period = 'total'"
                ),
                {"k": key},
            ).one()
    finally:
        engine.dispose()
    assert set(rows) == {r.id for r in [bad, *fine]}
    assert rows[fine[0].id].user_agent == "agent \u00e9"
    reduced = rows[bad.id]
    assert reduced.user_agent is None and reduced.metadata_user_id is None
    assert reduced.model == bad.model and reduced.input_tokens == bad.usage.input_tokens
    assert (Decimal(total.cost_usd), total.requests) == (PRICE * 4, 4)
    w.close_sync(5)
    assert spill_files(spill_dir) == [] and quarantine_files(spill_dir) == []


@contextmanager
def constraint(db: Backend, name: str, check: str) -> Iterator[None]:
    """A CHECK constraint someone added to request_logs, removed afterwards."""
    with db.engine().begin() as conn:
        conn.execute(text(f"ALTER TABLE request_logs ADD CONSTRAINT {name} CHECK ({check})"))
    try:
        yield
    finally:
        with db.engine().begin() as conn:
            conn.execute(text(f"ALTER TABLE request_logs DROP CONSTRAINT {name}"))


@on_postgres
def test_a_constraint_violation_is_stored_reduced_or_quarantined(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """Class 23 (23514, CHECK constraints an operator added): a row that breaks one on a
    client text is stored reduced, with its spend; one that breaks it on what a reduced
    row keeps (its key) is quarantined. The batch's other rows land either way."""
    evil_key, banned_key = new_key("evil"), "key_banned"
    evil = make_record(0, key_id=evil_key, user_agent="evil-bot/1.0")
    banned = make_record(1, key_id=banned_key)
    good = [make_record(i, key_id=new_key(f"ok{i}")) for i in range(2, 6)]
    with (
        constraint(db, "no_evil_agents", "user_agent IS NULL OR user_agent NOT LIKE 'evil%'"),
        constraint(db, "no_banned_keys", f"key_id IS DISTINCT FROM '{banned_key}'"),
    ):
        wdb = recording_db(db)
        w = start_writer(writers, wdb, spill_dir)
        for r in [good[0], evil, good[1], banned, *good[2:]]:
            w.submit(r)
        w.start()
        stats = wait_stats(
            w, "5 written, 1 quarantined", lambda s: s["quarantined"] == 1 and s["written"] == 5
        )
        assert stats["reduced"] == 1
        assert stats["failed_batches"] == 0 and stats["spilled"] == 0 and stats["healthy"]
    assert ("23514", "CheckViolation", "row") in wdb.seen
    assert set(db.ids()) == {r.id for r in [evil, *good]}
    stored = row_of(db, evil.id)
    assert stored["user_agent"] is None and stored["client_ip"] == evil.client_ip
    assert stored["status_code"] == 200 and stored["output_tokens"] == evil.usage.output_tokens
    assert stored["cost_usd"] == PRICE and stored["latency_ms"] == evil.latency_ms
    assert spend_of(db, evil_key)["total"] == (PRICE, 1)
    assert banned_key not in {k for k, *_ in execute(db.engine(), "SELECT key_id FROM key_spend")}
    (qfile,) = quarantine_files(spill_dir)
    assert banned.id in qfile.read_text() and "[23514]" in qfile.read_text()
    # The constraint is gone: renamed to a spill file's name, the quarantine replays.
    w.close_sync(5)
    qfile.rename(spill_dir / "spill-quarantine-1.jsonl")
    w2 = start_writer(writers, db.writer_db(), spill_dir)
    w2.start()
    wait_stats(w2, "quarantine replayed", lambda s: s["replayed_files"] == 1)
    assert set(db.ids()) == {r.id for r in [evil, banned, *good]}
    assert spend_of(db, banned_key)["total"] == (PRICE, 1)
    assert spill_files(spill_dir) == [] and quarantine_files(spill_dir) == []


@on_sqlite
def test_sqlite_string_or_blob_too_big_is_a_bad_row(
    db: Backend, spill_dir: Path, writers: list[LogWriter]
) -> None:
    """SQLite's own refusal (sqlite3.DataError, SQLITE_TOOBIG) under a lowered length
    limit: a long error message is stored reduced, a row too big even reduced is
    quarantined, the rest land, the database stays healthy."""

    def small_limit(conn: sqlite3.Connection) -> None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 3000)

    long_message = make_record(0, key_id=new_key("msg"), error_message="e" * 4000)
    huge_key = make_record(1, key_id="key_" + "k" * 3500)
    good = [make_record(i, key_id=new_key(f"s{i}")) for i in range(2, 5)]
    wdb = recording_db(db, setup=small_limit)
    w = start_writer(writers, wdb, spill_dir)
    for r in [long_message, *good, huge_key]:
        w.submit(r)
    w.start()
    stats = wait_stats(
        w, "4 written, 1 quarantined", lambda s: s["quarantined"] == 1 and s["written"] == 4
    )
    assert stats["reduced"] == 1
    assert stats["failed_batches"] == 0 and stats["healthy"]
    assert (None, "DataError", "row") in wdb.seen
    assert set(db.ids()) == {r.id for r in [long_message, *good]}
    assert row_of(db, long_message.id)["error_message"] is None
    assert spend_of(db, long_message.key_id or "")["total"] == (PRICE, 1)
    (qfile,) = quarantine_files(spill_dir)
    assert huge_key.id in qfile.read_text()


# ------------------------------------------------------------- outages stay outages


def _terminate(db: Backend) -> None:
    with pg_admin() as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (db.dbname,),
        )


@contextmanager
def read_only(db: Backend) -> Iterator[None]:
    """A failover to a standby, as the writer sees it: every new session is read-only."""
    with pg_admin() as admin:
        admin.execute(f'ALTER DATABASE "{db.dbname}" SET default_transaction_read_only = on')
    db.close()
    _terminate(db)
    try:
        yield
    finally:
        with pg_admin() as admin:
            admin.execute(f'ALTER DATABASE "{db.dbname}" RESET default_transaction_read_only')
        db.close()


OUTAGES: dict[str, tuple[str | None, Callable[[Backend], Any], dict[str, Any]]] = {
    # name: (SQLSTATE or connection failure seen, the outage, writer settings)
    "57P01 administrator shutdown": ("57P01", lambda db: db.outage(), {}),
    "57014 statement timeout": ("57014", lambda db: db.stuck(), {"statement_timeout": 0.3}),
    "25006 read-only transaction": ("25006", read_only, {}),
    "08 connection refused (pgbouncer down)": (None, lambda db: db.outage(), {}),
}


@pytest.mark.parametrize(
    ("backend", "outage"),
    [
        ("postgres", "57P01 administrator shutdown"),
        ("postgres", "57014 statement timeout"),
        ("postgres", "25006 read-only transaction"),
        ("pgbouncer", "08 connection refused (pgbouncer down)"),
    ],
    indirect=["backend"],
)
def test_an_outage_spills_quarantines_nothing_and_recovers(
    db: Backend, spill_dir: Path, writers: list[LogWriter], outage: str
) -> None:
    """Connection and server failures are the database's, not the rows': the batch (one
    oversized model in it) is spilled, the writer backs off, nothing is reduced or
    quarantined; once the database is back every row lands, the oversized one capped."""
    sqlstate, make_outage, settings = OUTAGES[outage]
    wdb = recording_db(db)
    w = start_writer(writers, wdb, spill_dir, **settings)
    w.start()
    warm = make_record(0)
    w.submit(warm)  # the writer holds an open connection when the outage begins
    wait_stats(w, "warm-up written", lambda s: s["written"] == 1)
    recs = [make_record(i) for i in range(1, 6)] + [make_record(6, model=HEX_MODEL)]
    with make_outage(db):
        for r in recs:
            w.submit(r)
        stats = wait_stats(w, "6 spilled", lambda s: s["spilled"] == 6)
        assert stats["failed_batches"] >= 1 and not stats["healthy"]
        assert stats["reduced"] == 0 and stats["quarantined"] == 0
    assert wdb.seen and all(verdict == "outage" for _, _, verdict in wdb.seen), wdb.seen
    if sqlstate is not None:
        assert sqlstate in {s for s, _, _ in wdb.seen}, wdb.seen
    wait_stats(w, "replayed and healthy", lambda s: s["replayed_files"] >= 1 and s["healthy"])
    wait_until(lambda: db.count() == 7, what="every row once the database is back")
    assert set(db.ids()) == {r.id for r in [warm, *recs]}
    assert row_of(db, recs[-1].id)["model"] == bounded(HEX_MODEL, MAX_MODEL_CHARS)
    wait_until(lambda: spill_files(spill_dir) == [], what="spill files replayed")
    assert quarantine_files(spill_dir) == []


@on_postgres
def test_a_serialization_failure_is_retried_at_once(
    db: Backend, spill_dir: Path, writers: list[LogWriter], caplog: pytest.LogCaptureFixture
) -> None:
    """Class 40 (40001, a concurrent update of the same key_spend row under REPEATABLE
    READ): retried at once on a fresh transaction. Not a bad row, not an outage, and not
    a reason to stop using COPY for ten minutes."""
    caplog.set_level(logging.INFO, logger="claude_proxy.store")
    key = new_key("serial")
    with pg_admin() as admin:
        admin.execute(
            f"ALTER DATABASE \"{db.dbname}\" SET default_transaction_isolation = 'repeatable read'"
        )
    try:
        with pg_admin(db.dbname, autocommit=False) as holder:
            holder.execute(
                "INSERT INTO key_spend (key_id, period, cost_usd, requests) "
                "VALUES (%s, 'total', 0, 0)",
                (key,),
            )
            holder.commit()
            # Hold the row's lock: the writer's spend update waits behind it, then finds
            # it changed after its snapshot.
            holder.execute(
                "UPDATE key_spend SET requests = requests WHERE key_id = %s AND period = 'total'",
                (key,),
            )
            wdb = recording_db(db)
            w = start_writer(writers, wdb, spill_dir)
            rec = make_record(0, key_id=key)
            w.submit(rec)
            w.start()

            def writer_waits() -> bool:
                with pg_admin() as admin:
                    return bool(
                        admin.execute(
                            "SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                            "AND wait_event_type = 'Lock'",
                            (db.dbname,),
                        ).fetchone()
                    )

            wait_until(writer_waits, what="the writer waiting for the key_spend row")
            holder.commit()
        stats = wait_stats(w, "written", lambda s: s["written"] == 1)
    finally:
        with pg_admin() as admin:
            admin.execute(f'ALTER DATABASE "{db.dbname}" RESET default_transaction_isolation')
        db.close()
    assert stats["failed_batches"] == 0 and stats["spilled"] == 0 and stats["healthy"]
    assert ("40001", "SerializationFailure", "transient") in wdb.seen
    assert spend_of(db, key)["total"] == (PRICE, 1)
    assert not any("COPY into request_logs failed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------ the table itself


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pg_errors.CardinalityViolation, "row"),
        (pg_errors.NumericValueOutOfRange, "row"),
        (pg_errors.UntranslatableCharacter, "row"),
        (pg_errors.StringDataRightTruncation, "row"),
        (pg_errors.NotNullViolation, "row"),
        (pg_errors.CheckViolation, "row"),
        (pg_errors.UniqueViolation, "row"),
        (pg_errors.ProgramLimitExceeded, "row"),
        (pg_errors.SerializationFailure, "transient"),
        (pg_errors.DeadlockDetected, "transient"),
        (pg_errors.ConnectionFailure, "outage"),
        (pg_errors.ReadOnlySqlTransaction, "outage"),
        (pg_errors.InsufficientPrivilege, "outage"),
        (pg_errors.UndefinedTable, "outage"),
        (pg_errors.DatatypeMismatch, "outage"),
        (pg_errors.DiskFull, "outage"),
        (pg_errors.TooManyConnections, "outage"),
        (pg_errors.ObjectNotInPrerequisiteState, "outage"),
        (pg_errors.QueryCanceled, "outage"),
        (pg_errors.AdminShutdown, "outage"),
        (pg_errors.CannotConnectNow, "outage"),
        (pg_errors.IoError, "outage"),
        (pg_errors.InternalError_, "outage"),
        (pg_errors.DataCorrupted, "outage"),
        (pg_errors.FeatureNotSupported, "outage"),
        (pg_errors.RaiseException, "outage"),
    ],
)
def test_postgres_faults_by_sqlstate_class(error: type[Exception], expected: str) -> None:
    """The table in docs/request-logs.md, class by class (the scenarios above raise most of
    these for real; this pins the rest)."""
    wdb = WriterDatabase(DatabaseTarget("postgresql", "postgresql://unused"))
    assert wdb.fault(error("x")) == expected


def test_failures_without_a_sqlstate() -> None:
    pg = WriterDatabase(DatabaseTarget("postgresql", "postgresql://unused"))
    assert pg.fault(psycopg.OperationalError("connection refused")) == "outage"
    assert pg.fault(psycopg.InterfaceError("the connection is closed")) == "outage"
    assert pg.fault(psycopg.DataError("text fields cannot contain NUL")) == "row"
    assert pg.fault(UnicodeEncodeError("latin-1", "\u2603", 0, 1, "no")) == "row"
    assert pg.fault(TimeoutError()) == "outage"
    lite = WriterDatabase(DatabaseTarget("sqlite", ":memory:"))
    assert lite.fault(sqlite3.DataError("string or blob too big")) == "row"
    assert lite.fault(sqlite3.IntegrityError("NOT NULL constraint failed")) == "row"
    assert lite.fault(sqlite3.InterfaceError("Error binding parameter 1")) == "row"
    assert lite.fault(OverflowError("Python int too large")) == "row"
    assert lite.fault(sqlite3.OperationalError("database is locked")) == "outage"
    assert lite.fault(sqlite3.OperationalError("disk I/O error")) == "outage"


# ----------------------------------------------------------------- caps in logs


def test_access_and_pricing_lines_are_capped(caplog: pytest.LogCaptureFixture) -> None:
    """An uncapped record (as it may reach the writer process) makes a bounded access line,
    and an unpriced 3,200-character model a bounded warning."""
    from claude_proxy.formats.anthropic.pricing import PriceTable
    from claude_proxy.telemetry.logs import FIELDS

    caplog.set_level(logging.INFO)
    rec: RequestRecord = make_record(
        0, model=HEX_MODEL, endpoint="/v1/" + "p" * 10_000, stop_reason="s" * 5000
    )
    log_access(rec, None)
    (line,) = [r for r in caplog.records if r.name == "claude_proxy.access"]
    fields = getattr(line, FIELDS)
    assert fields["model"] == bounded(HEX_MODEL, MAX_MODEL_CHARS)
    assert len(fields["endpoint"]) <= 512 and len(fields["stop_reason"]) <= 256
    assert len(orjson.dumps(fields)) < 4096
    PriceTable.load(None).cost(HEX_MODEL, rec.usage)
    (warning,) = [r.getMessage() for r in caplog.records if "no price for model" in r.getMessage()]
    assert HEX_MODEL not in warning and len(warning) < 600


# --------------------------------------------------------------- file permissions


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(path: Path) -> dict[str, int]:
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()}


def test_new_sqlite_database_files_are_private(tmp_path: Path) -> None:
    """A new SQLite log (the writer's connection, or the Engine's) is 0600, and so are the
    -wal and -shm files SQLite creates next to it, under the usual umask 022."""
    with umask(0o022):
        writer_path = tmp_path / "writer" / "log.db"
        wdb = WriterDatabase(database_target(f"sqlite:///{writer_path}"))
        try:
            wdb.run(lambda cur: cur.execute("CREATE TABLE t (a TEXT)"))
            wdb.run(lambda cur: cur.execute("INSERT INTO t VALUES ('x')"))
            seen = modes(writer_path)
        finally:
            wdb.close()
        assert set(seen) == {"log.db", "log.db-wal", "log.db-shm"}
        assert set(seen.values()) == {0o600}, seen

        engine_path = tmp_path / "engine" / "log.db"
        engine = make_engine(f"sqlite:///{engine_path}")
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (a TEXT)"))
            seen = modes(engine_path)
        finally:
            engine.dispose()
        assert "log.db" in seen and set(seen.values()) == {0o600}, seen

        # A file that exists keeps the permissions its owner gave it.
        shared = tmp_path / "shared.db"
        shared.touch(mode=0o640)
        shared.chmod(0o640)
        engine = make_engine(f"sqlite:///{shared}")
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (a TEXT)"))
        finally:
            engine.dispose()
        assert stat.S_IMODE(shared.stat().st_mode) == 0o640
