"""How a batch of rows goes into `request_logs`, per dialect: idempotently, with the new
rows' cost added to `key_spend` (by UTC day, month and in total) in the same transaction,
so spend is always exactly the sum over the log, however often a row is replayed.

PostgreSQL first tries COPY: it costs the server under half of the idempotent INSERT
per row (docs/benchmarks.md), and most batches are new rows. COPY cannot
skip a row that is already there, so a batch holding one (resent after a writer crash, or
replayed after a commit whose reply was lost) fails as a whole on the primary key and is
then written with the idempotent INSERT instead; nothing is counted twice either way.
If COPY fails for any other reason while the INSERT then succeeds (a pooler that does not
pass COPY through, say), the writer uses INSERT alone for the next ten minutes.
"""

from __future__ import annotations

import logging
import operator
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson

from claude_proxy.store.columns import (
    COPY_TYPES,
    ORG_LEVEL,
    ROW_COLUMNS,
    money_text,
    spend_periods,
)
from claude_proxy.store.rows import Row
from claude_proxy.store.writer_db import WriterDatabase, why

log = logging.getLogger("claude_proxy.store")

_COPY_PAUSE_SECONDS = 600.0
_UNIQUE_VIOLATION = "23505"  # SQLSTATE: the batch holds a row that is there already

# (key_id, period, cost, requests), in key order: two writers then take key_spend's row
# locks in the same order and cannot deadlock.
SpendRow = tuple[str, str, Decimal, int]


class BatchInserter:
    """`insert(rows)` -> how many were new. Used by the one writer thread."""

    def __init__(self, db: WriterDatabase, statement_timeout: float) -> None:
        self.db = db
        # Bound a hung statement; SET LOCAL is safe behind a transaction pooler.
        self._set_timeout = f"SET LOCAL statement_timeout = {int(statement_timeout * 1000)}"
        self._copy_after = 0.0  # monotonic time from which COPY is tried (again)

    def insert(self, rows: list[Row]) -> int:
        """Insert the rows that are new and add their cost to key_spend; raises on failure."""
        if not self.db.is_pg:
            values = [_sqlite_values(row) for row in rows]
            return int(self.db.run(lambda cur: _sqlite_execute(cur, rows, values)))
        copy_error: BaseException | None = None
        if time.monotonic() >= self._copy_after:
            try:
                return int(self.db.run(lambda cur: self._pg_copy(cur, rows)))
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
                    if self.db.fault(exc) != "outage":
                        # The rows are at fault (the caller sets the bad one aside), or a
                        # conflict already retried: neither says COPY itself cannot work.
                        raise
                    copy_error = exc
        # The whole batch as one json parameter, serialised by orjson (C).
        batch = orjson.dumps(rows, default=_json_default).decode()
        new = int(self.db.run(lambda cur: self._pg_insert(cur, batch)))
        if copy_error is not None:
            self._copy_after = time.monotonic() + _COPY_PAUSE_SECONDS
            log.warning(
                "COPY into request_logs failed (%s) where INSERT works; writing with INSERT "
                "for the next %d minutes",
                why(copy_error),
                _COPY_PAUSE_SECONDS // 60,
            )
        return new

    def _pg_copy(self, cur: Any, rows: list[Row]) -> int:
        cur.execute(self._set_timeout)
        with cur.copy(_PG_COPY) as copy:
            copy.set_types(COPY_TYPES)
            for values in map(_ROW_VALUES, rows):
                copy.write_row(values)
        # Every row is new (COPY is all or nothing), so every row adds to spend.
        spend = spend_rows(rows, set())
        if spend:
            keys, periods, costs, counts = (list(column) for column in zip(*spend, strict=True))
            cur.execute(_PG_SPEND, (keys, periods, costs, counts))
        return len(rows)

    def _pg_insert(self, cur: Any, batch: str) -> int:
        cur.execute(self._set_timeout)
        cur.execute(_PG_INSERT, (batch,))
        (new,) = cur.fetchone()
        return int(new)


def spend_rows(rows: list[Row], present: set[str]) -> list[SpendRow]:
    """key_spend increments summed over the rows not in `present` (ids already in the
    table), exactly (Decimal). Rows are grouped by key and UTC day first, so the periods
    are made once per group, not per row."""
    by_day: dict[tuple[str, date], list[Any]] = {}
    seen = set(present)
    for row in rows:
        key_id = row["key_id"]
        if (key_id is None and row.get("user_id") is None) or row["id"] in seen:
            continue
        seen.add(row["id"])
        created: datetime = row["created_at"]
        day = created.astimezone(UTC).date()
        cost = row["cost_usd"]
        # Every level the request counts at: its key, its user, its group, the organisation.
        for level in (key_id, row.get("user_id"), row.get("group_id"), ORG_LEVEL):
            if level is None:
                continue
            group = by_day.get((level, day))
            if group is None:
                group = by_day[(level, day)] = [Decimal(0), 0]
            if cost is not None:
                group[0] += cost
            group[1] += 1
    totals: dict[tuple[str, str], list[Any]] = {}
    for (key_id, day), (cost, n) in by_day.items():
        for period in spend_periods(day):
            t = totals.setdefault((key_id, period), [Decimal(0), 0])
            t[0] += cost
            t[1] += n
    return [(k, p, c, n) for (k, p), (c, n) in sorted(totals.items())]


# --- PostgreSQL ----------------------------------------------------------------------------

_NAMES = ", ".join(ROW_COLUMNS)
_ROW_VALUES = operator.itemgetter(*ROW_COLUMNS)
# The column list leaves `logged_at` to its server default.
_PG_COPY = f"COPY request_logs ({_NAMES}) FROM STDIN"
# One array per column: a batch has a few spend rows (keys x 3 periods), not hundreds.
_PG_SPEND = (
    "INSERT INTO key_spend (key_id, period, cost_usd, requests) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::numeric[], %s::bigint[]) "
    "ON CONFLICT (key_id, period) DO UPDATE SET "
    "cost_usd = key_spend.cost_usd + EXCLUDED.cost_usd, "
    "requests = key_spend.requests + EXCLUDED.requests"
)


def _pg_json_insert() -> str:
    """INSERT ... SELECT FROM json_populate_recordset(%s) ON CONFLICT (id) DO NOTHING,
    and the new rows' cost added to key_spend by day, month and in total.

    The whole batch travels as ONE json parameter, serialised by orjson (C). A
    multi-row VALUES list (SQLAlchemy's insertmanyvalues) makes psycopg parse ~15,000
    placeholders in Python per 500-row batch (~400 ms of CPU, GIL held); one array
    per column (unnest) still has psycopg dump every value in Python (~50 µs a row).
    Here PostgreSQL does the parsing. Spend comes from RETURNING, i.e. only from rows
    this statement inserted, so a replayed row never counts twice; key_spend rows are
    updated in key order. The statement's one result is the number of new rows.
    """
    day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    week = "to_char(created_at AT TIME ZONE 'UTC', 'IYYY-\"W\"IW')"
    month = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM')"
    periods = f"('day:' || {day}), ('week:' || {week}), ('month:' || {month}), ('total')"
    levels = f"(key_id), (user_id), (group_id), ('{ORG_LEVEL}')"
    return (
        f"WITH ins AS (INSERT INTO request_logs ({_NAMES}) SELECT {_NAMES} "
        "FROM json_populate_recordset(NULL::request_logs, %s::json) "
        "ON CONFLICT (id) DO NOTHING RETURNING key_id, user_id, group_id, cost_usd, created_at), "
        "spend AS (INSERT INTO key_spend (key_id, period, cost_usd, requests) "
        "SELECT l.level, p.period, coalesce(sum(cost_usd), 0), count(*) FROM ins "
        f"CROSS JOIN LATERAL (VALUES {levels}) AS l(level) "
        f"CROSS JOIN LATERAL (VALUES {periods}) AS p(period) "
        "WHERE l.level IS NOT NULL AND (key_id IS NOT NULL OR user_id IS NOT NULL) "
        "GROUP BY l.level, p.period "
        "ORDER BY l.level, p.period "
        "ON CONFLICT (key_id, period) DO UPDATE SET "
        "cost_usd = key_spend.cost_usd + EXCLUDED.cost_usd, "
        "requests = key_spend.requests + EXCLUDED.requests) "
        "SELECT count(*) FROM ins"
    )


_PG_INSERT = _pg_json_insert()


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return money_text(value)  # exact: numeric(18,8) parses the text, no float on the way
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- SQLite --------------------------------------------------------------------------------

_SQLITE_INSERT = (
    f"INSERT INTO request_logs ({_NAMES}) "
    f"VALUES ({', '.join('?' for _ in ROW_COLUMNS)}) ON CONFLICT (id) DO NOTHING"
)
_SQLITE_SPEND = (
    "INSERT INTO key_spend (key_id, period, cost_usd, requests) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key_id, period) DO UPDATE SET cost_usd = cost_usd + excluded.cost_usd, "
    "requests = requests + excluded.requests"
)


def _sqlite_execute(cur: Any, rows: list[Row], values: list[tuple[object, ...]]) -> int:
    ids = tuple(row["id"] for row in rows)
    marks = ", ".join("?" for _ in ids)
    present = {r[0] for r in cur.execute(f"SELECT id FROM request_logs WHERE id IN ({marks})", ids)}
    cur.executemany(_SQLITE_INSERT, values)
    inserted: int = cur.rowcount  # executemany's rowcount counts only the new rows
    spend = [(k, p, float(c), n) for k, p, c, n in spend_rows(rows, present)]
    if spend:
        cur.executemany(_SQLITE_SPEND, spend)
    return inserted


def _sqlite_values(row: Row) -> tuple[object, ...]:
    """A row as SQLite stores it (what UTCDateTime and Money do on this dialect)."""
    out: list[object] = []
    for name in ROW_COLUMNS:
        value = row[name]
        if name == "created_at":
            value = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        elif name == "cost_usd" and value is not None:
            value = float(value)
        out.append(value)
    return tuple(out)
